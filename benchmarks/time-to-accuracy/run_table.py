"""A table of training runs side by side: the test metric at every evaluation step, samples/s and the peak bytes a
stage held for batches in flight, one row per run folder (its summary.json and metrics.jsonl).

    python benchmarks/time-to-accuracy/run_table.py OUT_DIR [--metric test_accuracy|test_bits]

reads the run folders OUT_DIR/runs/* (kept out of git: `runs/` is ignored), writes OUT_DIR/table.md and
OUT_DIR/summary.json (the figures of the table) and prints the table.
"""

import argparse
import json
from pathlib import Path


def run_figures(folder: Path, metric: str) -> dict:
    summary = json.loads((folder / "summary.json").read_text())
    evals = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    curve = {r["step"]: r[metric] for r in evals if r["kind"] == "eval" and metric in r}
    peaks = summary.get("peak_stored_bytes") or []
    return {"run": folder.name, "mode": summary["mode"], "stages": summary["stages"], "curve": curve,
            "samples_per_sec": summary["samples_per_sec"], "train_seconds": summary["train_seconds"],
            "peak_stored_mb": [None if p is None else round(p / 2**20, 2) for p in peaks],
            "config": {k: summary["config"][k] for k in ("sg_update", "delay", "staleness", "seed", "lr", "batch_size")}}


def table(rows: list[dict], metric: str) -> str:
    steps = sorted({s for r in rows for s in r["curve"]})
    scale, unit = (100, "%") if metric == "test_accuracy" else (1, " bits")
    lines = ["| run | " + " | ".join(f"step {s}" for s in steps) + " | samples/s | peak stored MB per stage |",
             "|---" * (len(steps) + 3) + "|"]
    for r in rows:
        cells = [f"{scale * r['curve'][s]:.2f}" if s in r["curve"] else "-" for s in steps]
        peaks = " / ".join("-" if p is None else f"{p:g}" for p in r["peak_stored_mb"]) or "-"
        lines.append(f"| {r['run']} | " + " | ".join(cells) + f" | {r['samples_per_sec']:.0f} | {peaks} |")
    return "\n".join(lines) + f"\n\n{metric.replace('_', ' ')} ({unit.strip()}) at each evaluation.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="a folder whose runs/ holds the run folders")
    parser.add_argument("--metric", default="test_accuracy", choices=("test_accuracy", "test_bits"))
    args = parser.parse_args()
    rows = [run_figures(p.parent, args.metric) for p in sorted(args.out.glob("runs/*/summary.json"))]
    text = table(rows, args.metric)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
