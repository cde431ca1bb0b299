#!/usr/bin/env bash
# Issue 19's benchmarks: the character GPT and the residual CNN at K = 2, every mode, the peers and the
# SG-off rows in one bench run each; then the SG-vs-ablation line and the aims (benchmarks/synthetic-gradients/sg_line.py).
# Usage: bash benchmarks/time-to-accuracy/any_network.sh DATA_DIR   (about 40 and 25 minutes on a quiet 2-core machine)
set -euo pipefail
DATA=${1:?usage: any_network.sh DATA_DIR}
MODES=backprop,gpipe,1f1b,dni,cdni,dgl,single,torch-gpipe,torch-1f1b
dni-pipeline bench --config benchmarks/configs/gpt-kjv.yaml --data-dir "$DATA" --modes $MODES --sg-off-rows \
    --link-latency-ms 0,20,50 --reps 2 --steps 40 --target-bits 2.8 --tta-steps 800 --eval-every 50 \
    --no-progress --out benchmarks/results/gpt-kjv-k2
python benchmarks/synthetic-gradients/sg_line.py benchmarks/results/gpt-kjv-k2 --warm-up 200
# The residual CNN at two latencies and one repetition, to fit the session that measured it (evaluations of the
# 10,000 test images cost 3 s each, so every 100 steps).
dni-pipeline bench --config benchmarks/configs/resnet-mnist.yaml --data-dir "$DATA" --modes $MODES --sg-off-rows \
    --link-latency-ms 0,50 --reps 1 --steps 30 --target-accuracy 0.98 --tta-steps 500 --eval-every 100 \
    --no-progress --out benchmarks/results/resnet-mnist-k2
python benchmarks/synthetic-gradients/sg_line.py benchmarks/results/resnet-mnist-k2 --warm-up 200
