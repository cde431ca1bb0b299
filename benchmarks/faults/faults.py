"""Time lost to each fault, measured against the same dni run undisturbed, one after the other on this machine.

Scenarios: a stage actor killed (`ray.kill(..., no_restart=False)`), a stage frozen (SIGSTOP, found by its
unanswered pings after `--stall-timeout`), the node of a stage removed (benchmarks/faults/node_loss.py, its own
`Cluster`), and the driver killed (SIGKILL of `dni-pipeline train` and its local Ray, then `--resume`).
Each fault strikes `--delay` seconds after the checkpoint of step `--fault-after` is written.

Usage: python benchmarks/faults/faults.py --out runs/faults [--dataset mnist --data-dir ../shared/data] [--epochs 2]
Writes faults.json and faults.md to --out.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.files import write_json_atomic
from dni_pipeline.core.ray_session import start_local_ray
from dni_pipeline.core.run_folder import RunFolder
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.training import train_pipeline

HERE = Path(__file__).parent


def manifest_step(run: Path) -> int:
    try:
        return json.loads((run / "checkpoint.json").read_text())["step"]
    except (OSError, ValueError):
        return -1


def after_checkpoint(run: Path, step: int, delay: float, fault) -> dict:
    """Run `fault()` in a thread `delay` s after `run` checkpointed `step`; the returned dict gets its time."""
    struck = {}

    def wait_then_strike():
        while manifest_step(run) < step:
            time.sleep(0.02)
        time.sleep(delay)
        struck["at"] = time.time()
        fault()

    threading.Thread(target=wait_then_strike, daemon=True).start()
    return struck


def stage_actor(index: int):
    return ray.get_actor(next(n for n in ray.util.list_named_actors() if n.endswith(f"-stage{index}")))


def freeze(index: int) -> None:
    os.kill(ray.get(stage_actor(index).ping.remote())["pid"], signal.SIGSTOP)


def in_process(args, cfg: TrainConfig, data, name: str, fault) -> dict:
    run = args.out / name
    struck = after_checkpoint(run, args.fault_after, args.delay, fault) if fault else {}
    started = time.time()
    summary = train_pipeline(cfg, data, RunFolder(run), progress=False).summary
    return row(name, summary, time.time() - started, struck.get("at"))


def cli_train(args, run: Path, *extra: str) -> subprocess.Popen:
    flags = ["--mode", "dni", "--stages", "2", "--dataset", args.dataset, "--arch", args.arch, "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--checkpoint-every", str(args.checkpoint_every), "--out", str(run)]
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    with open(args.out / f"{run.name}.log", "a") as log:  # a file, not a pipe nobody reads while it runs
        return subprocess.Popen([sys.executable, "-m", "dni_pipeline", "train", *(extra or flags), "--no-progress"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def driver_scenarios(args) -> list[dict]:
    """Undisturbed and killed-then-resumed, both through the CLI (each invocation starts its own Ray)."""
    started = time.time()
    clean = cli_train(args, args.out / "cli-none")
    assert clean.wait() == 0, f"see {args.out}/cli-none.log"
    rows = [row("none (CLI)", json.loads((args.out / "cli-none" / "summary.json").read_text()), time.time() - started)]
    run = args.out / "cli-driver-killed"
    started = time.time()
    first = cli_train(args, run)
    after_checkpoint(run, args.fault_after, args.delay, lambda: os.killpg(first.pid, signal.SIGKILL))
    first.wait()
    resumed = cli_train(args, run, "--resume", str(run))
    assert resumed.wait() == 0, f"see {args.out}/{run.name}.log"
    rows.append(row("driver killed, then --resume (CLI)", json.loads((run / "summary.json").read_text()), time.time() - started))
    return rows


def node_scenarios(args) -> list[dict]:
    """On a Cluster of 3 one-CPU workers: undisturbed, and the node of stage 1 removed."""
    rows = []
    for name, folder, fault in (("none (Cluster)", "cluster-none", ["--no-fault"]),
                                ("node removed (Cluster)", "cluster-node-removed", [])):
        flags = ["--dataset", args.dataset, "--arch", args.arch, "--epochs", str(args.epochs), "--batch-size",
                 str(args.batch_size), "--checkpoint-every", str(args.checkpoint_every), "--fault-after", str(args.fault_after)]
        flags += ["--data-dir", args.data_dir] if args.data_dir else []
        started = time.time()
        done = subprocess.run([sys.executable, str(HERE / "node_loss.py"), str(args.out / folder),
                               *flags, *fault], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout.splitlines()[-1])
        rows.append(row(name, summary, time.time() - started, summary.get("removed_at")))
    return rows


def row(name: str, summary: dict, wall: float, struck_at: float | None = None) -> dict:
    recovery = summary["recoveries"][0] if summary["recoveries"] else {}
    return {
        "scenario": name,
        "completed": summary["stopped_by"] == "completed" and summary["stage_updates"] == [summary["planned_steps"]] * 2,
        "test_accuracy": round(summary["test_accuracy"], 4),
        "wall_seconds": round(wall, 2),
        "detect_seconds": round(recovery["detected_at"] - struck_at, 2) if recovery and struck_at else None,
        "restore_seconds": recovery.get("restore_seconds"),
        "steps_redone": recovery["detected_near_step"] - recovery["rolled_back_to"] if recovery else None,
        "resumes": summary["resumes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="fcn3")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--fault-after", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--stall-timeout", type=float, default=10.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True)
    cfg = TrainConfig(mode="dni", dataset=args.dataset, data_dir=args.data_dir, arch=args.arch, stages=2, epochs=args.epochs,
                      batch_size=args.batch_size, checkpoint_every=args.checkpoint_every,
                      stall_timeout=args.stall_timeout).validate()
    data = load_dataset(cfg.dataset, cfg.data_dir)
    start_local_ray(4, include_dashboard=False, log_to_driver=False)
    rows = [
        in_process(args, cfg, data, "none", None),
        in_process(args, cfg, data, "stage killed", lambda: ray.kill(stage_actor(1), no_restart=False)),
        in_process(args, cfg, data, f"stage frozen (stall timeout {args.stall_timeout:g} s)", lambda: freeze(1)),
    ]
    ray.shutdown()
    rows += node_scenarios(args) + driver_scenarios(args)
    baseline = None
    for r in rows:  # each group's first row is its undisturbed run
        baseline = r["wall_seconds"] if r["scenario"].startswith("none") else baseline
        r["lost_seconds"] = round(r["wall_seconds"] - baseline, 2)
    write_json_atomic(args.out / "faults.json", rows)
    columns = list(rows[0])
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join("-" if r[c] is None else str(r[c]) for c in columns) + " |" for r in rows]
    (args.out / "faults.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
