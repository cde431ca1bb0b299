#!/usr/bin/env bash
# The bench model (K = 2, fc1024*8, linear SG models) for EPOCHS epochs: backprop, dni, cdni and the
# SG-off ablation (the same for both SG modes: stage 0 is never trained), evaluated and probed every 25
# steps; then the test accuracy at every evaluation side by side and the median SG cosine per epoch.
# Usage: benchmarks/synthetic-gradients/sg_vs_ablation.sh DATA_DIR OUT_DIR [EPOCHS]
set -euo pipefail
data=${1:?data dir holding the MNIST IDX files}
out=${2:?output folder}
epochs=${3:-3}
common=(--stages 2 --arch 'fc1024*8' --sg-hidden= --dataset mnist --data-dir "$data" --epochs "$epochs"
        --eval-every 25 --sg-probe-every 25 --no-progress)
dni-pipeline train --mode backprop "${common[@]}" --out "$out/backprop"
dni-pipeline train --mode dni "${common[@]}" --out "$out/dni"
dni-pipeline train --mode cdni "${common[@]}" --out "$out/cdni"
dni-pipeline train --mode dni --sg-off "${common[@]}" --out "$out/sg-off"
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
records = {run: [json.loads(line) for line in (out / run / "metrics.jsonl").open()] for run in ("backprop", "dni", "cdni", "sg-off")}
evals = {run: {r["step"]: r["test_accuracy"] for r in rs if r["kind"] == "eval"} for run, rs in records.items()}
print("| step | epoch | backprop | dni | cdni | SG off | dni - SG off (pp) | cdni - SG off (pp) |")
print("|---|---|---|---|---|---|---|---|")
for step in sorted(evals["sg-off"]):
    row = [evals[run].get(step) for run in ("backprop", "dni", "cdni", "sg-off")]
    cells = ["-" if a is None else f"{100 * a:.2f}" for a in row]
    gaps = ["-" if a is None else f"{100 * (a - row[3]):+.2f}" for a in row[1:3]]
    epoch = next(r["epoch"] for r in records["sg-off"] if r["kind"] == "eval" and r["step"] == step)
    print(f"| {step} | {epoch:.2f} | " + " | ".join(cells + gaps) + " |")
for run in ("dni", "cdni"):
    for epoch in sorted({r["epoch"] for r in records[run] if r["kind"] == "step"}):
        cos = [r["sg_cosine"][0] for r in records[run] if r["kind"] == "step" and r["epoch"] == epoch and "sg_cosine" in r]
        scale = [r["sg_scale"][0] for r in records[run] if r["kind"] == "step" and r["epoch"] == epoch and "sg_scale" in r]
        print(f"{run} epoch {epoch}: median SG cosine {statistics.median(cos):.3f} over {len(cos)} probes, "
              f"median scale applied {statistics.median(scale):.3f}")
PY
