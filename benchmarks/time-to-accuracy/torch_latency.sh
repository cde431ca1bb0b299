#!/usr/bin/env bash
# Issue 21's time-to-accuracy table against PyTorch's own schedules at every link latency (their sends
# delayed as the stage actors' are), with the zero-bubble schedule as a row: the bench MLP, then the
# character GPT. Usage: bash benchmarks/time-to-accuracy/torch_latency.sh DATA_DIR   (about 42 and 30 minutes on a quiet 2-core machine)
set -euo pipefail
DATA=${1:?usage: torch_latency.sh DATA_DIR}
dni-pipeline bench --modes single,torch-gpipe,torch-1f1b,torch-zb,backprop,gpipe,1f1b,cdni,dgl --stages 2 \
    --dataset mnist --data-dir "$DATA" --link-latency-ms 0,20,50 --reps 2 --tta-epochs 2 \
    --no-progress --out benchmarks/results/bench-k2-torch-latency
dni-pipeline bench --config benchmarks/configs/gpt-kjv.yaml --data-dir "$DATA" \
    --modes single,torch-gpipe,torch-1f1b,torch-zb,backprop,gpipe,dgl --link-latency-ms 0,20,50 --reps 2 --steps 40 \
    --target-bits 2.8 --tta-steps 800 --eval-every 50 --no-progress --out benchmarks/results/gpt-kjv-k2-torch-latency
