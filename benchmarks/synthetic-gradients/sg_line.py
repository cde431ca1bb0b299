"""Read a bench folder's bench.json and say, from its time-to-target runs, what issues 19 and 33 ask of it:

- the line that must hold: each unlocked mode that hears from the loss (an SG mode, corrected or not, and the
  delayed mode) at or above the SG-off ablation (accuracy; at or below for bits per token) at every evaluation
  after the warm-up, at every latency; the delayed mode within a tolerance of backprop at equal steps;
- the aims: each corrected SG mode at or above the delayed mode at equal steps; the fastest unlocked mode's
  seconds to the target against the best locked mode's and dgl's at each latency; cdni's distance from backprop.

Usage: python benchmarks/synthetic-gradients/sg_line.py BENCH_FOLDER [--warm-up STEPS] [--ablation FOLDER] [--tolerance T];
writes BENCH_FOLDER/sg_line.md too. `--ablation` reads the SG-off rows from another bench of the same model and
data when this one has none (an SG-off run computes the same whatever runs beside it).
"""

import argparse
import json
from pathlib import Path

UNLOCKED = ("dni", "cdni", "dgl", "delayed", "dni+corrected", "cdni+corrected")
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
    parser.add_argument("--warm-up", type=int, default=200, help="steps before the lines are checked")
    parser.add_argument("--ablation", type=Path, help="a bench folder of the same model whose SG-off rows to use")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="how far the delayed mode may be from backprop at equal steps (bits, or accuracy)")
    args = parser.parse_args()
    entries = {e["mode"]: e for e in json.loads((args.folder / "bench.json").read_text())}
    if args.ablation:
        other = {e["mode"]: e for e in json.loads((args.ablation / "bench.json").read_text())}
        entries.update({m: e for m, e in other.items() if m.endswith("sg-off") and m not in entries})
    target = next(iter(entries.values()))["target"]
    bits = "bits" in target
    lines = [f"# {args.folder.name}: target {target}, warm-up {args.warm_up} steps", ""]

    def compare(mode: str, reference: str, allowed: float = 0.0) -> None:
        """A row per latency: `mode` at or better than `reference` less `allowed` at every evaluation after the warm-up."""
        for latency, curve in entries[mode]["curve_by_latency"].items():
            if latency not in entries[reference]["curve_by_latency"]:
                continue
            other = {step: value for step, _, value in entries[reference]["curve_by_latency"][latency]}
            pairs = [(value, other[step]) for step, _, value in curve if step >= args.warm_up and step in other]
            margins = [(b - a) if bits else (a - b) for a, b in pairs]
            holds = bool(pairs) and all(m >= -allowed for m in margins)
            worst = f"{min(margins):+.4f}" if margins else "-"
            lines.append(f"| {mode} | {reference} | {latency} | {len(pairs)} | {'yes' if holds else 'no'} | {worst} |")

    header = ["| mode | against | latency ms | evaluations compared | holds everywhere | worst margin |",
              "|---|---|---|---|---|---|"]
    lines += ["## Against the SG-off ablation at equal steps", "", *header]
    for mode in ("dni", "cdni", "dni+corrected", "cdni+corrected", "delayed"):
        ablation = f"{'cdni' if mode.startswith('cdni') else 'dni'} sg-off"
        if mode in entries and ablation in entries:
            compare(mode, ablation)
    if "delayed" in entries and "backprop" in entries:
        lines += ["", f"## The delayed mode against backprop at equal steps (within {args.tolerance:g})", "", *header]
        compare("delayed", "backprop", args.tolerance)
    if "delayed" in entries:
        lines += ["", "## Each corrected SG mode against the delayed mode at equal steps (the aim)", "", *header]
        for mode in ("dni+corrected", "cdni+corrected"):
            if mode in entries:
                compare(mode, "delayed")

    lines += ["", "## Seconds to the target: fastest unlocked against best locked and dgl", "",
              "| latency ms | fastest unlocked | s | best locked | s | ratio (locked / unlocked) | dgl s "
              "| ratio (dgl / unlocked) |",
              "|---|---|---|---|---|---|---|---|"]
    for latency in entries["backprop"]["time_to_accuracy_by_latency"]:
        (tu, mu), (tl, ml) = _fastest(entries, UNLOCKED, latency), _fastest(entries, LOCKED, latency)
        ratio = f"{tl / tu:.2f}x" if tu and tl else "-"
        dgl = entries.get("dgl", {}).get("time_to_accuracy_by_latency", {}).get(latency)
        to_dgl = f"{dgl / tu:.2f}x" if tu and dgl else "-"
        lines.append(f"| {latency} | {mu} | {tu or '-'} | {ml} | {tl or '-'} | {ratio} | {dgl or '-'} | {to_dgl} |")

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
