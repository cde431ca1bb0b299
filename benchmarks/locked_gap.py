"""Where the project's gpipe and 1f1b lose time against torch.distributed.pipelining's schedules.

Runs each locked schedule on the stage actors and PyTorch's on gloo, interleaved, on the bench model,
and splits the actors' mean step time from their timed events: compute in the stages, sending
(transport), the driver's turn between steps (stage 0's last update of one step to its first forward
of the next: the ledger reports, the driver wakes and feeds), and the rest (waiting on a neighbour).

    python benchmarks/locked_gap.py --data-dir ../shared/data --steps 60 --reps 2
"""

import argparse
import dataclasses
import statistics

import ray

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.peers import train_peer
from dni_pipeline.trainer.training import train_pipeline


def split_step_time(events: list[dict], steps: range, stages: int) -> dict:
    """Mean milliseconds per step: wall, busy per stage, transport per stage and the driver's turn."""
    work = [e for e in events if e["kind"] in ("forward", "backward") and e["step"] in steps]
    first = {s: min(e["start"] for e in work if e["step"] == s and e["stage"] == 0) for s in steps}
    last = {s: max(e["end"] for e in work if e["step"] == s and e["stage"] == 0) for s in steps}
    wall = (first[steps[-1]] - first[steps[0]]) / (len(steps) - 1)
    turn = statistics.mean(first[s + 1] - last[s] for s in steps[:-1])
    busy = [sum(e["end"] - e["start"] for e in work if e["stage"] == i) / len(steps) for i in range(stages)]
    sent = [sum(e["transport"] for e in work if e["stage"] == i) / len(steps) for i in range(stages)]
    return {"wall": 1000 * wall, "driver turn": 1000 * turn, "busy": [1000 * b for b in busy],
            "transport": [1000 * t for t in sent]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder holding the MNIST IDX files")
    parser.add_argument("--steps", type=int, default=60, help="steps per run (the first 10 are not counted)")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_dir)
    base = TrainConfig(dataset="mnist", arch="fc1024*8", stages=2, batch_size=256, micro_batches=4,
                       max_steps=args.steps, eval_every=args.steps, sg_probe_every=0).validate()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows: dict[str, list] = {}
    for _ in range(args.reps):
        for ours, theirs in (("gpipe", "torch-gpipe"), ("1f1b", "torch-1f1b")):
            result = train_pipeline(dataclasses.replace(base, mode=ours), data, progress=False)
            rows.setdefault(ours, []).append(split_step_time(result.events, range(10, args.steps), base.stages))
            peer = train_peer(base, theirs, data)
            rows.setdefault(theirs, []).append({"wall": 1000 * base.batch_size / peer.summary["samples_per_sec"]})
    print("| schedule | ms per step | busy per stage (ms) | sending per stage (ms) | driver's turn (ms) |")
    print("|---|---|---|---|---|")
    for name, runs in rows.items():
        wall = statistics.median(r["wall"] for r in runs)
        if "busy" not in runs[0]:
            print(f"| {name} | {wall:.1f} | - | - | - |")
            continue
        busy = " / ".join(f"{statistics.median(r['busy'][i] for r in runs):.1f}" for i in range(base.stages))
        sent = " / ".join(f"{statistics.median(r['transport'][i] for r in runs):.1f}" for i in range(base.stages))
        print(f"| {name} | {wall:.1f} | {busy} | {sent} | {statistics.median(r['driver turn'] for r in runs):.1f} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
