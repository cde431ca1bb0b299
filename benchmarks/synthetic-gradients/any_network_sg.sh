#!/usr/bin/env bash
# The SG-vs-ablation line of issue 19 under the default update rule (gated): the character GPT and the
# residual CNN at K = 2, backprop, dni, cdni and the SG-off rows in one bench run each, then
# benchmarks/synthetic-gradients/sg_line.py. The peers' rows are in any_network.sh's folders (the update rule does not touch them).
# Usage: bash benchmarks/synthetic-gradients/any_network_sg.sh DATA_DIR   (about 16 and 23 minutes on a quiet 2-core machine)
set -euo pipefail
DATA=${1:?usage: any_network_sg.sh DATA_DIR}
dni-pipeline bench --config benchmarks/configs/gpt-kjv.yaml --data-dir "$DATA" --modes backprop,dni,cdni --sg-off-rows \
    --link-latency-ms 0,20,50 --reps 1 --steps 20 --target-bits 2.8 --tta-steps 800 --eval-every 50 \
    --no-progress --out benchmarks/results/gpt-kjv-k2-gated
python benchmarks/synthetic-gradients/sg_line.py benchmarks/results/gpt-kjv-k2-gated --warm-up 200
dni-pipeline bench --config benchmarks/configs/resnet-mnist.yaml --data-dir "$DATA" --modes backprop,dni,cdni --sg-off-rows \
    --link-latency-ms 0,20,50 --reps 1 --steps 20 --target-accuracy 0.98 --tta-steps 500 --eval-every 100 \
    --no-progress --out benchmarks/results/resnet-mnist-k2-gated
python benchmarks/synthetic-gradients/sg_line.py benchmarks/results/resnet-mnist-k2-gated --warm-up 200
