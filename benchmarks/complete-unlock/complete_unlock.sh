#!/usr/bin/env bash
# The paper's MNIST FCN with every layer decoupled (K = hidden layers + 1: the head on a stage of its own):
# backprop, dni and cdni update-unlocked, the same with synthetic inputs (the complete unlock), and the
# SG-off ablation, one run per mode and seed, all at EPOCHS epochs; then a table (mean and spread over
# seeds) from the runs' summary.json and each input model's R^2 over the last epoch's steps. A run whose
# summary.json exists is kept, so a stopped table resumes. EXTRA names more runs: cdni-si-wide, the complete
# unlock with input models of two hidden layers of 1024, MODE-paper-rule / MODE-calibrated-rule / MODE-corrected-rule,
# dni or cdni under another SG update rule, delayed (the delayed mode, DDG's delays K - 1 - k) and delayed-dN (a fixed
# delay of N steps). BASE replaces the runs every table has (default: backprop cdni cdni-si dni dni-si sgoff).
# Usage: benchmarks/complete-unlock/complete_unlock.sh DATA_DIR OUT_DIR [ARCH] [EPOCHS] [SEEDS] [EXTRA] [BASE]
set -euo pipefail
data=${1:?data dir holding the MNIST IDX files}
out=${2:?output folder}
arch=${3:-fcn3}
epochs=${4:-3}
seeds=${5:-0 1 2}
extra=${6:-}
base_runs=${7:-backprop cdni cdni-si dni dni-si sgoff}
stages=$(( $(python3 -c "import sys; print({'fcn3': 3, 'fcn6': 6}.get(sys.argv[1], 0))" "$arch") + 1 ))
[[ $stages -gt 1 ]] || { echo "arch must be fcn3 or fcn6" >&2; exit 2; }
for seed in $seeds; do
  for run in $base_runs $extra; do
    [[ -f $out/$run-seed$seed/summary.json ]] && continue
    rm -rf "$out/$run-seed$seed"
    case $run in
      *-si) flags=(--mode "${run%-si}" --synthetic-inputs) ;;
      cdni-si-wide) flags=(--mode cdni --synthetic-inputs --input-hidden 1024,1024) ;;
      *-rule) rule=${run%-rule}; flags=(--mode "${rule%-*}" --sg-update "${rule##*-}") ;;
      delayed-d*) flags=(--mode delayed --delay "${run#delayed-d}") ;;
      sgoff) flags=(--mode dni --sg-off) ;;  # the same run for both SG modes: every stage but the head is frozen
      *) flags=(--mode "$run") ;;
    esac
    dni-pipeline train "${flags[@]}" --dataset mnist --data-dir "$data" --arch "$arch" --stages "$stages" \
      --batch-size 256 --epochs "$epochs" --seed "$seed" --out "$out/$run-seed$seed" --no-progress
  done
done
python3 - "$out" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
runs = {}
for path in sorted(out.glob("*-seed*/summary.json")):
    runs.setdefault(path.parent.name.rsplit("-seed", 1)[0], []).append(path.parent)
def r2(folder):
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").open()]
    steps = [s for s in steps if s["kind"] == "step" and "input_r2" in s]
    last = [s for s in steps if s["epoch"] == steps[-1]["epoch"]]
    return [statistics.mean(s["input_r2"][k] for s in last) for k in range(1, len(last[0]["input_r2"]))]
summaries = {name: [json.loads((f / "summary.json").read_text()) for f in folders] for name, folders in runs.items()}
base = statistics.mean(s["test_accuracy"] for s in summaries["backprop"])
print("| run | test accuracy (mean [min, max] over seeds) | vs backprop | train s (median) | input-model R^2, last epoch | seeds |")
print("|---|---|---|---|---|---|")
rules = [f"{mode}-{rule}-rule" for mode in ("cdni", "dni") for rule in ("paper", "calibrated", "corrected")]
delayed = sorted(name for name in summaries if name.startswith("delayed"))
for name in ("backprop", "cdni", "cdni-si", "cdni-si-wide", "dni", "dni-si", "sgoff", *rules, *delayed):
    if name not in summaries:
        continue
    acc = [s["test_accuracy"] for s in summaries[name]]
    seconds = statistics.median(s["train_seconds"] for s in summaries[name])
    fits = " ".join(f"{v:.2f}" for v in r2(runs[name][0])) + " (seed 0)" if "-si" in name else "-"
    label = {"sgoff": "SG off (both modes)", "cdni-si-wide": "cdni + synthetic inputs, input models 1024, 1024"}.get(
        name, name.replace("-si", " + synthetic inputs").replace("-paper-rule", ", --sg-update paper")
        .replace("-calibrated-rule", ", --sg-update calibrated").replace("-corrected-rule", ", --sg-update corrected")
        .replace("delayed-d", "delayed, --delay "))
    print(f"| {label} | {100 * statistics.mean(acc):.2f}% [{100 * min(acc):.2f}, {100 * max(acc):.2f}] "
          f"| {100 * (statistics.mean(acc) - base):+.2f} pp | {seconds:.0f} | {fits} | {len(acc)} |")
PY
