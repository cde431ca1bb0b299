"""Seconds of training to a given filtered MRR, for KG training configurations side by side.

Each variant (the dataset's preset with some fields changed) trains in one process with the job's own
batches and steps (`kg.training`), and every `--eval-every-steps` steps its full filtered validation
and test MRR are measured with the clock stopped. The curves go to `curves.jsonl`; `results.md`
gives, per variant, the best validation MRR (what presets are chosen on), the seconds of training to
each `--targets` test MRR, and the test MRR at the best validation point.

Usage: python benchmarks/kg/kg_time_to_quality.py --data-dir ../shared/data --dataset wn18rr \
           --variant preset: --variant adam:optimizer=adam,lr=0.01 --minutes 5 --out runs/kg-ttq
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from dni_pipeline.core.sweeps import config_fields, parse_grid
from kg.datasets import load_kg, with_reciprocals
from kg.evaluate import answer_index, evaluate
from kg.models import build_model
from kg.presets import preset
from kg.training import KGTrainConfig, TrainingLoss, epoch_batches, make_optimizer, train_step


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, fields = text.partition(":")
    grid = parse_grid([pair for pair in fields.split(",") if pair], config_fields(KGTrainConfig))
    return name, {k: values[0] for k, values in grid.items()}


def run(cfg: KGTrainConfig, data, index, minutes: float, max_steps: int, eval_every: int, targets: list[float], log,
        device: str) -> dict:
    model = build_model(cfg.model, data.num_entities, data.num_relations, dim=cfg.dim, init_scale=cfg.init_scale,
                        gamma=cfg.gamma, p_norm=cfg.p_norm, seed=cfg.seed).to(device)
    optimizer, loss = make_optimizer(cfg, model), TrainingLoss(cfg, model)
    triples = with_reciprocals(data.splits["train"], data.num_relations)
    seconds, step, epoch, seen, points = 0.0, 0, 0, 0, []
    done = lambda: seconds >= 60 * minutes or step >= max_steps  # noqa: E731
    while not done() and epoch < cfg.epochs:
        for batch, negatives, size in epoch_batches(cfg, triples, epoch, data.num_entities):
            model.train()
            start = time.perf_counter()
            train_step(loss, optimizer, batch.to(device), None if negatives is None else negatives.to(device), size)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - start
            step, seen = step + 1, seen + size
            if step % eval_every == 0 or done():
                point = {"step": step, "epoch": round(seen / len(triples), 3),
                         "train_seconds": round(seconds, 2),
                         **{f"{split}_mrr": round(evaluate(model, data, split, index)["mrr"], 4) for split in ("valid", "test")}}
                points.append(point)
                log(point)
                if done():
                    break
        epoch += 1
    best = max(points, key=lambda p: p["valid_mrr"])
    reached = {t: next((p["train_seconds"] for p in points if p["test_mrr"] >= t), None) for t in targets}
    return {"best_valid_mrr": best["valid_mrr"], "test_mrr_at_best_valid": best["test_mrr"],
            "best_at_seconds": best["train_seconds"], "seconds_to_test_mrr": reached, "points": points}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding kg/DATASET/")
    p.add_argument("--dataset", default="wn18rr", help="dataset (default wn18rr)")
    p.add_argument("--variant", action="append", required=True,
                   help="NAME:field=value,... the preset with these fields changed (repeatable; NAME: alone is the preset)")
    p.add_argument("--minutes", type=float, default=5.0, help="minutes of training per variant (default 5)")
    p.add_argument("--max-steps", type=int, default=10**9, help="stop a variant after this many steps too")
    p.add_argument("--eval-every-steps", type=int, default=100, help="steps between evaluations (default 100)")
    p.add_argument("--targets", default="0.366,0.442", help="test MRRs to time (default PyKEEN's after 1 and 3 epochs)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--out", type=Path, required=True, help="folder for curves.jsonl and results.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_kg(args.dataset, args.data_dir, "drop", False)
    index = answer_index(data)
    targets = [float(t) for t in args.targets.split(",")]
    base = KGTrainConfig(**preset(args.dataset, "complex"))
    rows = []
    with open(args.out / "curves.jsonl", "a") as curves:
        for name, changes in map(parse_variant, args.variant):
            cfg = dataclasses.replace(base, **changes)
            print(f"{name}: {cfg}", flush=True)

            def log(point, name=name):
                curves.write(json.dumps({"variant": name, **point}) + "\n")
                curves.flush()
                print(f"  {name} {point}", flush=True)

            result = run(cfg, data, index, args.minutes, args.max_steps, args.eval_every_steps, targets, log, args.device)
            rows.append((name, changes, result))
    where = f"{args.threads} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    lines = [f"{args.dataset}, {args.minutes:g} min of training per variant, {where}; test MRR timed at "
             f"{', '.join(map(str, targets))}; evaluation every {args.eval_every_steps} steps (clock stopped)\n",
             "| variant | changes | best valid MRR | at s | test MRR there | " + " | ".join(f"s to {t}" for t in targets) + " |",
             "|---|---|---|---|---|" + "---|" * len(targets)]
    for name, changes, r in rows:
        seconds = r["seconds_to_test_mrr"]
        reached = " | ".join("-" if seconds[t] is None else f"{seconds[t]:.0f}" for t in targets)
        lines.append(f"| {name} | {changes or 'preset'} | {r['best_valid_mrr']:.4f} | {r['best_at_seconds']:.0f} | "
                     f"{r['test_mrr_at_best_valid']:.4f} | {reached} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
