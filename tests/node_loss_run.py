"""Run by test_faults (in its own process, with its own Ray): a dni run on a `ray.cluster_utils.Cluster`
(a head with no CPUs and three one-slot worker nodes) whose node holding stage 1 is removed mid-run.
Prints the run's summary as JSON on the last line."""

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from dni_pipeline.config import TrainConfig
from dni_pipeline.data import load_dataset
from dni_pipeline.pipeline import run_training
from dni_pipeline.runtime import RunFolder


def main(folder: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 200 << 20})
    workers = [cluster.add_node(num_cpus=1, resources={"stage_slot": 1}, object_store_memory=200 << 20) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    removed = {}

    def remove_node_of_stage_1() -> None:
        while not (folder / "checkpoint.json").exists() or json.loads((folder / "checkpoint.json").read_text())["step"] < 40:
            time.sleep(0.05)
        name = next(n for n in ray.util.list_named_actors() if n.endswith("-stage1"))
        node_id = ray.get(ray.get_actor(name).placement.remote())["node_id"]
        node = next(w for w in workers if w.node_id == node_id)
        removed.update(node_id=node_id, at=time.time())
        cluster.remove_node(node, allow_graceful=False)

    try:
        cfg = TrainConfig(mode="dni", dataset="digits", arch="fcn3", stages=2, epochs=8, batch_size=64,
                          checkpoint_every=20).validate()
        threading.Thread(target=remove_node_of_stage_1, daemon=True).start()
        started = time.time()
        summary = run_training(cfg, load_dataset("digits", None), RunFolder(folder).create(), progress=False).summary
        summary["removed_node"] = removed["node_id"]
        summary["seconds_after_removal"] = round(time.time() - removed["at"], 3)
        summary["run_seconds"] = round(time.time() - started, 3)
        print(json.dumps(summary))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
