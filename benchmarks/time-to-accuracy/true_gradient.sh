#!/usr/bin/env bash
# Issue 33's bench: the modes unlocked by the true gradient (delayed; dni and cdni under --sg-update corrected)
# beside locked backprop, dgl, one PyTorch process and PyTorch's 1F1B, on the character GPT and the residual CNN
# at K = 2, at 0, 20 and 50 ms per message, one bench run per model; then the MLP the same way. The gated SG rows
# and their SG-off ablations of the same models are benchmarks/synthetic-gradients/any_network_sg.sh's (the split of the update rules
# left them as they were).
# Usage: bash benchmarks/time-to-accuracy/true_gradient.sh DATA_DIR [MODELS]   (MODELS: gpt resnet mlp cost; about 20, 30, 30 and 5
# minutes)
set -euo pipefail
DATA=${1:?usage: true_gradient.sh DATA_DIR [MODELS]}
MODELS=${2:-gpt resnet mlp cost}
ROWS=single,torch-1f1b,backprop,dgl,delayed,dni+corrected,cdni+corrected
OUT=benchmarks/results
for model in $MODELS; do
  case $model in
    gpt) dni-pipeline bench --config benchmarks/configs/gpt-kjv.yaml --data-dir "$DATA" --modes "$ROWS" \
           --link-latency-ms 0,20,50 --reps 1 --steps 20 --target-bits 2.8 --tta-steps 800 --eval-every 50 \
           --no-progress --out "$OUT/gpt-kjv-k2-true-gradient" ;;
    resnet) dni-pipeline bench --config benchmarks/configs/resnet-mnist.yaml --data-dir "$DATA" --modes "$ROWS" \
           --link-latency-ms 0,20,50 --reps 1 --steps 20 --target-accuracy 0.98 --tta-steps 500 --eval-every 100 \
           --no-progress --out "$OUT/resnet-mnist-k2-true-gradient" ;;
    mlp) dni-pipeline bench --data-dir "$DATA" --modes "$ROWS,dni,cdni" --sg-off-rows --link-latency-ms 0,20,50 \
           --reps 1 --steps 40 --target-accuracy 0.97 --tta-epochs 2 --eval-every 25 \
           --no-progress --out "$OUT/bench-k2-true-gradient" ;;
    # What each rule's measurements and bookkeeping cost: samples/s of the bench MLP's SG rows under every rule,
    # interleaved, against the paper's rule (which measures nothing); throughput only.
    cost) dni-pipeline bench --data-dir "$DATA" --modes backprop,delayed,dni+paper,dni,dni+corrected,cdni+paper,cdni,cdni+corrected \
           --reps 3 --steps 40 --tta-epochs 0 --no-progress --out "$OUT/bench-k2-rule-cost" ;;
    *) echo "unknown model $model: gpt, resnet, mlp or cost" >&2; exit 2 ;;
  esac
done
