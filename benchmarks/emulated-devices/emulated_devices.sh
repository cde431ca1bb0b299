#!/usr/bin/env bash
# Issue 21's emulated devices: measure the bench MLP's stages, validate the emulation against the real
# run at K = 2, then sweep K = 2, 4, 8, 16 at 0, 20 and 50 ms with M = 4 and M = 4K micro-batches.
# Usage: bash benchmarks/emulated-devices/emulated_devices.sh DATA_DIR   (about 110 minutes on a quiet 2-core machine)
set -euo pipefail
DATA=${1:?usage: emulated_devices.sh DATA_DIR}
OUT=benchmarks/results/emulated-devices
ALL=single,torch-gpipe,torch-1f1b,torch-zb,backprop,gpipe,1f1b,dni,cdni,dgl
K2=single,torch-gpipe,torch-1f1b,torch-zb,backprop,gpipe,1f1b,cdni,dgl  # the modes the K = 2 config's SG fits
bench() { dni-pipeline bench --data-dir "$DATA" --tta-epochs 0 --no-progress "$@"; }
python benchmarks/emulated-devices/emulated_devices.py measure --data-dir "$DATA" --out benchmarks/configs
# Validation: the real MLP and its emulation, K = 2, one CPU per stage, as the bench runs them.
bench --modes "$K2" --stages 2 --arch 'fc1024*8' --link-latency-ms 0 --reps 2 --out "$OUT/validate-real"
bench --config benchmarks/configs/emulated-mlp-k2.yaml --modes "$K2" --stages 2 --link-latency-ms 0 --reps 2 \
    --out "$OUT/validate-emulated"
# The sweep: 0.1 CPU per stage (waiting needs none; 16 stages fit two cores); PyTorch's 1F1B needs M >= K.
sweep() { bench --config benchmarks/configs/emulated-mlp.yaml --cpus-per-stage 0.1 --link-latency-ms 0,20,50 \
    --reps 1 --steps 20 "$@"; }
sweep --modes "$ALL" --stages 2,4 --out "$OUT/m4-K2-4"
sweep --modes "${ALL/torch-1f1b,/}" --stages 8,16 --out "$OUT/m4-K8-16"
# M = 4K (GPipe's rule for a small bubble), the locked schedules only; a locked step is a whole fill and
# drain, alike from the first, so 10 steps.
for K in 2 4 8 16; do
    sweep --modes gpipe,1f1b,torch-gpipe,torch-1f1b,torch-zb --stages "$K" --micro-batches $((4 * K)) --steps 10 \
        --out "$OUT/m4k-K$K"
done
# The fastest unlocked mode at steady state: 100 steps, so the fill and drain (K hops, each with the
# link latency) weigh little in its stage utilization.
sweep --modes dgl --stages 2,4,8,16 --steps 100 --out "$OUT/long-dgl"
python benchmarks/emulated-devices/emulated_devices.py report "$OUT"
# Issue 33: the delayed mode beside backprop and dgl at every K (its own folder; the rest of the sweep is as above).
sweep --modes backprop,dgl,delayed --stages 2,4,8,16 --out "$OUT/delayed-K2-16"
