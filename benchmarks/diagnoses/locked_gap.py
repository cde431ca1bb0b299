"""Where the project's gpipe and 1f1b lose time against torch.distributed.pipelining's schedules.

Runs each locked schedule on the stage actors and PyTorch's on gloo, interleaved, on the bench model,
and splits the actors' mean step time from their timed events: busy per stage (its messages' handling:
compute, sending (transport) and the per-message work around them) and the rest (waiting on a
neighbour). Beside them, each stage's work alone: its forwards and backwards of a step's micro-batches
and its Adam update, in this process on one thread, nothing sent. (The driver feeds a locked step while
the one before runs, so there is no turn between steps left to measure.)

    python benchmarks/diagnoses/locked_gap.py --data-dir ../shared/data --steps 60 --reps 2
"""

import argparse
import dataclasses
import statistics
import time

import ray
import torch
import torch.nn.functional as F

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.ray_session import start_local_ray
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.network import build_stages, parse_arch
from dni_pipeline.trainer.peers import train_peer
from dni_pipeline.trainer.training import train_pipeline


def split_step_time(events: list[dict], steps: range, stages: int) -> dict:
    """Mean milliseconds per step: wall, busy per stage and transport per stage."""
    work = [e for e in events if e["kind"] in ("forward", "backward") and e["step"] in steps]
    first = {s: min(e["start"] for e in work if e["step"] == s and e["stage"] == 0) for s in steps}
    wall = (first[steps[-1]] - first[steps[0]]) / (len(steps) - 1)
    busy = [sum(e["end"] - e["start"] for e in work if e["stage"] == i) / len(steps) for i in range(stages)]
    sent = [sum(e["transport"] for e in work if e["stage"] == i) / len(steps) for i in range(stages)]
    return {"wall": 1000 * wall, "busy": [1000 * b for b in busy], "transport": [1000 * t for t in sent]}


def compute_alone(cfg: TrainConfig, data, repeats: int = 10) -> list[float]:
    """Milliseconds per step of each stage's own work in one process on one thread: the forwards and
    backwards of a step's micro-batches and its Adam update, with nothing sent."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stages = build_stages(parse_arch(cfg.arch), data.input_shape, data.num_classes, cfg.stages, seed=cfg.seed)
    optimizers = [torch.optim.Adam(stage.parameters(), lr=cfg.lr) for stage in stages]
    micro = cfg.batch_size // cfg.micro_batches
    x, y = torch.from_numpy(data.x_train[:micro]), torch.from_numpy(data.y_train[:micro])
    seconds = [0.0] * len(stages)

    def clock(i: int, start: float) -> None:
        seconds[i] += time.perf_counter() - start

    for _ in range(repeats):
        for _ in range(cfg.micro_batches):
            held, h = [], x
            for i, stage in enumerate(stages):
                h_in, start = h.detach().requires_grad_(i > 0), time.perf_counter()
                h = stage(h_in)
                clock(i, start)
                held.append((h_in, h))
            start = time.perf_counter()
            F.cross_entropy(held[-1][1], y).backward()
            clock(len(stages) - 1, start)
            for i in reversed(range(len(stages) - 1)):
                start = time.perf_counter()
                held[i][1].backward(held[i + 1][0].grad)
                clock(i, start)
        for i, optimizer in enumerate(optimizers):
            start = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad()
            clock(i, start)
    torch.set_num_threads(threads)
    return [1000 * s / repeats for s in seconds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder holding the MNIST IDX files")
    parser.add_argument("--steps", type=int, default=60, help="steps per run (the first 10 are not counted)")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions")
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_dir)
    base = TrainConfig(dataset="mnist", arch="fc1024*8", stages=2, batch_size=256, micro_batches=4,
                       max_steps=args.steps, eval_every=args.steps, sg_probe_every=0).validate()
    start_local_ray(2, include_dashboard=False, log_to_driver=False)
    rows: dict[str, list] = {}
    alone = []
    for _ in range(args.reps):
        alone.append(compute_alone(base, data))
        for ours, theirs in (("gpipe", "torch-gpipe"), ("1f1b", "torch-1f1b")):
            result = train_pipeline(dataclasses.replace(base, mode=ours), data, progress=False)
            rows.setdefault(ours, []).append(split_step_time(result.events, range(10, args.steps), base.stages))
            peer = train_peer(base, theirs, data)
            rows.setdefault(theirs, []).append({"wall": 1000 * base.batch_size / peer.summary["samples_per_sec"]})
    print("| schedule | ms per step | busy per stage (ms) | sending per stage (ms) |")
    print("|---|---|---|---|")
    for name, runs in rows.items():
        wall = statistics.median(r["wall"] for r in runs)
        if "busy" not in runs[0]:
            print(f"| {name} | {wall:.1f} | - | - |")
            continue
        busy = " / ".join(f"{statistics.median(r['busy'][i] for r in runs):.1f}" for i in range(base.stages))
        sent = " / ".join(f"{statistics.median(r['transport'][i] for r in runs):.1f}" for i in range(base.stages))
        print(f"| {name} | {wall:.1f} | {busy} | {sent} |")
    work = " / ".join(f"{statistics.median(a[i] for a in alone):.1f}" for i in range(base.stages))
    print(f"| each stage's work alone (one process, one thread) | - | {work} | - |")
    ray.shutdown()


if __name__ == "__main__":
    main()
