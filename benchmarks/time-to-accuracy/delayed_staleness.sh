#!/usr/bin/env bash
# The delayed mode's staleness treatments (none, recompute, lookahead) beside locked backprop at K = 2, equal steps,
# on the bench MLP (one epoch), the character GPT (400 steps) and the residual CNN (300 steps): which one is the
# default. Run folders under OUT/{mlp,gpt,resnet}/runs/ (not kept in git); table.md and summary.json beside them.
# Usage: bash benchmarks/time-to-accuracy/delayed_staleness.sh DATA_DIR OUT [MODELS]   (about 20 minutes on a quiet 2-core machine)
set -euo pipefail -f  # -f: no globbing of --arch fc1024*8
data=${1:?data dir}
out=${2:?output folder}
models=${3:-mlp gpt resnet}
declare -A flags=(
  [mlp]="--arch fc1024*8 --sg-hidden= --dataset mnist --epochs 1 --eval-every 58"
  [gpt]="--config benchmarks/configs/gpt-kjv.yaml --max-steps 400 --eval-every 100"
  [resnet]="--config benchmarks/configs/resnet-mnist.yaml --max-steps 300 --eval-every 100"
)
for model in $models; do
  for run in backprop delayed-none delayed-recompute delayed-lookahead; do
    extra=(--mode "${run%%-*}")
    [[ $run == delayed-* ]] && extra+=(--staleness "${run#delayed-}")
    # shellcheck disable=SC2086
    dni-pipeline train ${flags[$model]} --data-dir "$data" --stages 2 "${extra[@]}" --out "$out/$model/runs/$run" --no-progress
  done
  [[ $model == gpt ]] && m=test_bits || m=test_accuracy
  python benchmarks/time-to-accuracy/run_table.py "$out/$model" --metric "$m"
done
