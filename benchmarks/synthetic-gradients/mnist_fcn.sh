#!/usr/bin/env bash
# The paper's MNIST FCN (3 hidden layers of 256 with BN + ReLU, each its own stage), batch 256, one run
# per mode and seed, each SG mode beside its SG-off ablation, then a table (mean and spread over seeds)
# from the runs' summary.json files.
# Usage: benchmarks/synthetic-gradients/mnist_fcn.sh DATA_DIR OUT_DIR [EPOCHS] [SEEDS]
set -euo pipefail
data=${1:?data dir holding the MNIST IDX files}
out=${2:?output folder}
epochs=${3:-30}
seeds=${4:-0 1 2}
for seed in $seeds; do
  for run in backprop dni dni-sgoff cdni cdni-sgoff; do
    mode=${run%-sgoff}
    extra=()
    [[ $run == *-sgoff ]] && extra=(--sg-off)
    dni-pipeline train --mode "$mode" "${extra[@]}" --dataset mnist --data-dir "$data" --arch fcn3 --stages 3 \
      --batch-size 256 --epochs "$epochs" --seed "$seed" --out "$out/$run-seed$seed" --no-progress
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("| run | test accuracy (mean [min, max] over seeds) | vs backprop | samples/s | seeds |")
print("|---|---|---|---|---|")
runs = {}
for path in sorted(out.glob("*-seed*/summary.json")):
    runs.setdefault(path.parent.name.rsplit("-seed", 1)[0], []).append(json.loads(path.read_text()))
base = statistics.mean(s["test_accuracy"] for s in runs["backprop"])
for name in ("backprop", "dni", "dni-sgoff", "cdni", "cdni-sgoff"):
    acc = [s["test_accuracy"] for s in runs.get(name, [])]
    if acc:
        rate = statistics.median(s["samples_per_sec"] for s in runs[name])
        print(f"| {name.replace('-sgoff', ' sg-off')} | {100 * statistics.mean(acc):.2f}% [{100 * min(acc):.2f}, {100 * max(acc):.2f}] "
              f"| {100 * (statistics.mean(acc) - base):+.2f} pp | {rate:.0f} | {len(acc)} |")
PY
