"""Each stage's own update rate with one stage slowed to twice its compute: locked backprop, update-unlocked
cdni and cdni with synthetic inputs (the complete unlock), side by side on the stage actors.

A stage's update rate is its updates over the span from its first update's start to its last one's end
(summary.json's `stage_update_rate`). For each mode an unslowed run measures every stage's busy time per
message; the slowed run then adds that much to one stage's every message (`--stage-delay-ms`), so its
compute doubles. The table gives each stage's rate slowed over unslowed, and samples/s of the whole run.

    python benchmarks/complete-unlock/complete_unlock_rates.py --data-dir ../shared/data --steps 80
"""

import argparse
import json
import statistics
from pathlib import Path

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.ray_session import start_local_ray
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.stage import WORK_KINDS
from dni_pipeline.trainer.training import train_pipeline

MODES = {"backprop": {"mode": "backprop"}, "cdni": {"mode": "cdni"},
         "cdni + synthetic inputs": {"mode": "cdni", "synthetic_inputs": True}}


def delay_doubling(events: list[dict], stage: int) -> float:
    """Milliseconds per message that double `stage`'s compute: its busy time per message."""
    work = [e for e in events if e["stage"] == stage and e["kind"] in WORK_KINDS]
    return 1000 * sum(e["end"] - e["start"] for e in work) / len(work)


def others_worst(row: dict) -> float:
    """The lowest rate ratio among the stages that were not slowed."""
    return min(r for stage, r in enumerate(row["ratio"]) if stage != row["slowed_stage"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--arch", default="fc1024*8")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--out", default="benchmarks/results/complete-unlock/rates")
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_dir, seed=0)
    start_local_ray(max(2, args.stages), include_dashboard=False, log_to_driver=False)
    rows = []
    for name, options in MODES.items():
        base = dict(dataset="mnist", arch=args.arch, stages=args.stages, batch_size=256, max_steps=args.steps,
                    sg_hidden=[], sg_probe_every=0, **options)
        unslowed = train_pipeline(TrainConfig(**base).validate(), data, progress=False)
        before = unslowed.summary["stage_update_rate"]
        for slowed in range(args.stages):
            delays = [0.0] * args.stages
            delays[slowed] = round(delay_doubling(unslowed.events, slowed), 2)
            run = train_pipeline(TrainConfig(**base, stage_delay_ms=delays).validate(), data, progress=False)
            after = run.summary["stage_update_rate"]
            rows.append({"mode": name, "slowed_stage": slowed, "delay_ms": delays[slowed],
                         "rate_unslowed": before, "rate_slowed": after,
                         "ratio": [round(a / b, 3) for a, b in zip(after, before)],
                         "samples_per_sec": [unslowed.summary["samples_per_sec"], run.summary["samples_per_sec"]]})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rates.json").write_text(json.dumps(rows, indent=1))
    lines = [f"{args.arch}, K = {args.stages}, {args.steps} steps of batch 256 on MNIST; one stage slowed to twice its "
             "compute. Update rate of each stage, slowed over unslowed (1.00: untouched).", "",
             "| mode | slowed stage (+ms a message) | " + " | ".join(f"stage {s} rate ratio" for s in range(args.stages))
             + " | others' worst | samples/s unslowed -> slowed |", "|---|---|" + "---|" * (args.stages + 2)]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['slowed_stage']} (+{row['delay_ms']:g}) | "
                     + " | ".join(f"{r:.2f}" for r in row["ratio"])
                     + f" | {others_worst(row):.2f} | {row['samples_per_sec'][0]:.0f} -> {row['samples_per_sec'][1]:.0f} |")
    medians = {m: statistics.median(others_worst(row) for row in rows if row["mode"] == m) for m in MODES}
    lines += ["", "median of the others' worst ratio: " + ", ".join(f"{m} {v:.2f}" for m, v in medians.items())]
    (out / "rates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
