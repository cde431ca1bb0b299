"""A dni run on a `ray.cluster_utils.Cluster` (a head with no CPUs and three one-slot worker nodes on this
machine) whose node holding stage 1 is removed once the checkpoint of step `--fault-after` is written.
Prints the run's summary as JSON on the last line, with `removed_node` and `removed_at` added.

Usage: python benchmarks/faults/node_loss.py RUN [--dataset digits|mnist] [--data-dir D] [--epochs E] [--arch A]
(used by tests/test_faults.py and benchmarks/faults/faults.py)
"""

import argparse
import json
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.run_folder import RunFolder
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.training import train_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder to create")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="fcn3")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint-every", type=int, default=20)
    parser.add_argument("--fault-after", type=int, default=40, help="remove the node once this step is checkpointed")
    parser.add_argument("--no-fault", action="store_true", help="remove nothing: the undisturbed run on the same cluster")
    args = parser.parse_args()
    cfg = TrainConfig(mode="dni", dataset=args.dataset, data_dir=args.data_dir, arch=args.arch, stages=2,
                      epochs=args.epochs, batch_size=args.batch_size, checkpoint_every=args.checkpoint_every).validate()
    data = load_dataset(cfg.dataset, cfg.data_dir)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 300 << 20})
    workers = [cluster.add_node(num_cpus=1, resources={"stage_slot": 1}, object_store_memory=300 << 20) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    removed = {}

    def remove_node_of_stage_1() -> None:
        manifest = args.run / "checkpoint.json"
        while not manifest.exists() or json.loads(manifest.read_text())["step"] < args.fault_after:
            time.sleep(0.05)
        name = next(n for n in ray.util.list_named_actors() if n.endswith("-stage1"))
        node_id = ray.get(ray.get_actor(name).placement.remote())["node_id"]
        removed.update(removed_node=node_id, removed_at=round(time.time(), 3))
        cluster.remove_node(next(w for w in workers if w.node_id == node_id), allow_graceful=False)

    try:
        if not args.no_fault:
            threading.Thread(target=remove_node_of_stage_1, daemon=True).start()
        summary = train_pipeline(cfg, data, RunFolder(args.run), progress=False).summary
        print(json.dumps({**summary, **removed}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
