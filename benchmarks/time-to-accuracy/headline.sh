#!/usr/bin/env bash
# The README's headline table from the current code, one model per part: one PyTorch process, PyTorch's three
# schedules, the project's locked schedules and the unlocked modes (dgl, delayed, cdni under the default corrected rule) at
# K = 2 and 0 / 20 / 50 ms per message, every time-to-target cell three times, interleaved (--tta-reps 3: the table
# gives the median and the range). Each part writes benchmarks/results/headline/MODEL/ (bench.md, bench.json,
# provenance.json), then headline_table.py writes headline/table.md from every finished part; commit each part as
# it finishes. Run with nothing else on the machine. A part killed before its end
# resumes from its journal (cells.jsonl, each finished run): run the same command again.
# Usage: bash benchmarks/time-to-accuracy/headline.sh DATA_DIR [MODELS]   (MODELS: mlp gpt resnet; about 1.5, 2.5 and
# 2.5 hours on 2 cores, estimated from the one-run benches' training seconds times three, plus a third for
# evaluations and actor starts: a part may span sessions, each resuming the last)
set -euo pipefail
DATA=${1:?usage: headline.sh DATA_DIR [MODELS]}
MODELS=${2:-mlp gpt resnet}
ROWS=single,torch-gpipe,torch-1f1b,torch-zb,backprop,gpipe,1f1b,dgl,delayed,cdni+corrected
COMMON=(--data-dir "$DATA" --modes "$ROWS" --link-latency-ms 0,20,50 --reps 1 --steps 20 --tta-reps 3 --no-progress)
OUT=benchmarks/results/headline
unfinished() { [[ -f $1/cells.jsonl && ! -f $1/bench.md ]]; }
for model in $MODELS; do
  resume=(); if unfinished "$OUT/$model"; then resume=(--resume); fi
  case $model in
    mlp) dni-pipeline bench "${COMMON[@]}" "${resume[@]}" --target-accuracy 0.97 --tta-epochs 2 --eval-every 25 --out "$OUT/mlp" ;;
    gpt) dni-pipeline bench --config benchmarks/configs/gpt-kjv.yaml "${COMMON[@]}" "${resume[@]}" --target-bits 2.8 --tta-steps 800 \
           --eval-every 50 --out "$OUT/gpt" ;;
    resnet) dni-pipeline bench --config benchmarks/configs/resnet-mnist.yaml "${COMMON[@]}" "${resume[@]}" --target-accuracy 0.98 \
           --tta-steps 500 --eval-every 100 --out "$OUT/resnet" ;;
    *) echo "unknown model $model: mlp, gpt or resnet" >&2; exit 2 ;;
  esac
done
python benchmarks/time-to-accuracy/headline_table.py "$OUT"  # the README's table from every finished part
