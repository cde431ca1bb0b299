"""`dni-pipeline cluster start|status|stop|validate`: a multi-node Ray cluster on this machine, and
offline checks of the deploy/ files."""

import argparse
import json
from pathlib import Path

from dni_pipeline.core.job_cli import Parser

from . import cluster
from .deploy_check import check_deploy_file

__all__ = ["add_commands"]

DEFAULT_DIR = Path("runs/local-cluster")


def cmd_start(args: argparse.Namespace) -> None:
    state = cluster.start(args.dir, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                          gpus_per_worker=args.gpus_per_worker, stage_slots_per_worker=args.stage_slots,
                          port=args.port, dashboard_port=args.dashboard_port, object_store_mb=args.object_store_mb)
    print(f"local cluster up: head + {state['workers']} workers, {state['stage_slots']} stage slots")
    print(f"address:   {state['address']}   (dni-pipeline train --address {state['address']} ...)")
    print(f"dashboard: {state['dashboard']}   (localhost only; jobs: ray job submit --address {state['dashboard']})")
    print("clients on this machine need RAY_AUTH_MODE=token (the token is in ~/.ray/auth_token)")
    print(f"stop it with: dni-pipeline cluster stop --dir {args.dir}")


def cmd_status(args: argparse.Namespace) -> None:
    print(json.dumps(cluster.status(args.dir), indent=2))


def cmd_stop(args: argparse.Namespace) -> None:
    print(f"stopped {cluster.stop(args.dir)} node process group(s) recorded in {args.dir}")


def cmd_validate(args: argparse.Namespace) -> None:
    for path in args.files:
        print(check_deploy_file(path))


def add_commands(commands) -> None:
    """Register `cluster start|status|stop|validate`."""
    group = commands.add_parser("cluster", help="a multi-node Ray cluster on this machine; check deploy files").add_subparsers(
        dest="cluster_command", required=True, parser_class=Parser)
    start = group.add_parser("start", help="start a head and N worker nodes here (token auth on, dashboard on localhost)",
                             description=cluster.__doc__)
    start.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                       help=f"folder for cluster.json and node logs (default {DEFAULT_DIR})")
    start.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    start.add_argument("--cpus-per-worker", type=float, default=1, help="logical CPUs of each worker (default 1)")
    start.add_argument("--gpus-per-worker", type=int, default=0, help="GPUs of each worker (default 0)")
    start.add_argument("--stage-slots", type=int, default=1,
                       help="stage slots of each worker: stage actors it may host (default 1)")
    start.add_argument("--port", type=int, default=0, help="GCS port of the head (default: a free one)")
    start.add_argument("--dashboard-port", type=int, default=0, help="dashboard / job API port (default: a free one)")
    start.add_argument("--object-store-mb", type=int, default=256, help="object store of each node in MiB (default 256)")
    start.set_defaults(func=cmd_start)
    for name, func, text in (("status", cmd_status, "the recorded cluster: address, processes, alive nodes"),
                             ("stop", cmd_stop, "end exactly the node processes `start` recorded (never `ray stop`)")):
        p = group.add_parser(name, help=text)
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"the folder given to start (default {DEFAULT_DIR})")
        p.set_defaults(func=func)
    val = group.add_parser("validate", help="check `ray up` configs (Ray's own validation) and KubeRay manifests offline")
    val.add_argument("files", nargs="+", type=Path, help="YAML files, e.g. deploy/*.yaml deploy/kuberay/*.yaml")
    val.set_defaults(func=cmd_validate)
