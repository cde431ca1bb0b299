#!/usr/bin/env bash
# Issue 19's benchmarks: the character GPT and the residual CNN at K = 2, every mode, the peers and the
# SG-off rows in one bench run each, at 0, 20 and 50 ms per message; then the SG-vs-ablation line and the aims.
# Usage: bash benchmarks/any_network.sh DATA_DIR   (about an hour each on a quiet 2-core machine)
set -euo pipefail
DATA=${1:?usage: any_network.sh DATA_DIR}
MODES=backprop,gpipe,1f1b,dni,cdni,dgl,single,torch-gpipe,torch-1f1b
dni-pipeline bench --config benchmarks/configs/gpt-kjv.yaml --data-dir "$DATA" --modes $MODES --sg-off-rows \
    --link-latency-ms 0,20,50 --reps 2 --steps 40 --target-bits 2.8 --tta-steps 1000 --eval-every 50 \
    --no-progress --out benchmarks/results/gpt-kjv-k2
python benchmarks/sg_line.py benchmarks/results/gpt-kjv-k2 --warm-up 200
dni-pipeline bench --config benchmarks/configs/resnet-mnist.yaml --data-dir "$DATA" --modes $MODES --sg-off-rows \
    --link-latency-ms 0,20,50 --reps 2 --steps 40 --target-accuracy 0.98 --tta-steps 900 --eval-every 100 \
    --no-progress --out benchmarks/results/resnet-mnist-k2
python benchmarks/sg_line.py benchmarks/results/resnet-mnist-k2 --warm-up 200
