"""Read a bench folder's bench.json and say, from its time-to-target runs, what issue 19 asks of it:

- the line that must hold: each SG mode at or above its SG-off ablation (accuracy; at or below for bits
  per token) at every evaluation after the warm-up, at every latency;
- the aims: the fastest unlocked mode's seconds to the target against the best locked mode's at each
  latency, and cdni's distance from backprop at equal steps.

Usage: python benchmarks/sg_line.py BENCH_FOLDER [--warm-up STEPS]; writes BENCH_FOLDER/sg_line.md too.
"""

import argparse
import json
from pathlib import Path

UNLOCKED = ("dni", "cdni", "dgl")
LOCKED = ("backprop", "gpipe", "1f1b", "torch-gpipe", "torch-1f1b", "single")


def _better(a: float, b: float, bits: bool) -> bool:
    return a <= b if bits else a >= b


def _fastest(entries: dict, modes: tuple, latency: str) -> tuple:
    """(seconds, mode) of the quickest of `modes` to the target at `latency`."""
    times = [(entries[m]["time_to_accuracy_by_latency"].get(latency), m) for m in modes if m in entries]
    times = [(t, m) for t, m in times if t]
    return min(times) if times else (None, "none reached")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--warm-up", type=int, default=200, help="steps before the SG-vs-ablation line is checked")
    args = parser.parse_args()
    entries = {e["mode"]: e for e in json.loads((args.folder / "bench.json").read_text())}
    target = next(iter(entries.values()))["target"]
    bits = "bits" in target
    lines = [f"# {args.folder.name}: target {target}, warm-up {args.warm_up} steps", ""]

    lines += ["## SG mode against its SG-off ablation at equal steps", "",
              "| mode | latency ms | evaluations compared | SG at or better everywhere | worst margin |", "|---|---|---|---|---|"]
    for mode in ("dni", "cdni"):
        if mode not in entries or f"{mode} sg-off" not in entries:
            continue
        for latency, curve in entries[mode]["curve_by_latency"].items():
            ablation = {step: value for step, _, value in entries[f"{mode} sg-off"]["curve_by_latency"][latency]}
            pairs = [(value, ablation[step]) for step, _, value in curve if step >= args.warm_up and step in ablation]
            margins = [(b - a) if bits else (a - b) for a, b in pairs]
            holds = all(_better(a, b, bits) for a, b in pairs)
            worst = f"{min(margins):+.4f}" if margins else "-"
            lines.append(f"| {mode} | {latency} | {len(pairs)} | {'yes' if holds and pairs else 'no'} | {worst} |")

    lines += ["", "## Seconds to the target: fastest unlocked against best locked", "",
              "| latency ms | fastest unlocked | s | best locked | s | ratio (locked / unlocked) |", "|---|---|---|---|---|---|"]
    for latency in entries["backprop"]["time_to_accuracy_by_latency"]:
        (tu, mu), (tl, ml) = _fastest(entries, UNLOCKED, latency), _fastest(entries, LOCKED, latency)
        ratio = f"{tl / tu:.2f}x" if tu and tl else "-"
        lines.append(f"| {latency} | {mu} | {tu or '-'} | {ml} | {tl or '-'} | {ratio} |")

    if "cdni" in entries and "backprop" in entries:
        lines += ["", "## cdni against backprop at equal steps (latency 0)", ""]
        reference = {step: value for step, _, value in entries["backprop"]["curve_by_latency"]["0"]}
        gaps = [(step, value - reference[step]) for step, _, value in entries["cdni"]["curve_by_latency"]["0"]
                if step in reference]
        for step, gap in gaps:
            lines.append(f"- step {step}: cdni {'+' if gap >= 0 else ''}{gap:.4f} {'bits' if bits else '(accuracy)'} "
                         "against backprop")
    text = "\n".join(lines) + "\n"
    (args.folder / "sg_line.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
