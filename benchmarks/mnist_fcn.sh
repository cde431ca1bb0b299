#!/usr/bin/env bash
# The paper's MNIST FCN (3 hidden layers of 256 with BN + ReLU, each its own stage), batch 256, Adam,
# one run per mode, then a table from the runs' summary.json files.
# Usage: benchmarks/mnist_fcn.sh DATA_DIR OUT_DIR [EPOCHS]
set -euo pipefail
data=${1:?data dir holding the MNIST IDX files}
out=${2:?output folder}
epochs=${3:-30}
for mode in backprop dni cdni; do
  dni-pipeline train --mode "$mode" --dataset mnist --data-dir "$data" --arch fcn3 --stages 3 \
    --batch-size 256 --epochs "$epochs" --out "$out/$mode" --no-progress
done
python3 - "$out" <<'PY'
import json, sys, pathlib
rows = [json.loads((pathlib.Path(sys.argv[1]) / m / "summary.json").read_text()) for m in ("backprop", "dni", "cdni")]
print("| mode | test accuracy | samples/s | stage utilization | train s |")
print("|---|---|---|---|---|")
for r in rows:
    util = " / ".join(f"{u:.2f}" for u in r["stage_utilization"])
    print(f"| {r['mode']} | {100 * r['test_accuracy']:.2f}% | {r['samples_per_sec']:.0f} | {util} | {r['train_seconds']:.0f} |")
PY
