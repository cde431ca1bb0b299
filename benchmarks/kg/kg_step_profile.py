"""Where a 1vsall ComplEx training step spends its time, and what bf16 buys the matrix products.

Times one score-matrix product (batch x width x entities) in float32 and in bfloat16, then profiles
`--steps` training steps (torch.profiler, CPU) of ComplEx-N3 with the WN18RR preset's shape
(d = 200, batch 1000, init 0.3, N3 0.1, Adagrad, bf16) and prints the seconds a step and the share of
the largest operators.

Usage: python benchmarks/kg/kg_step_profile.py --data-dir ../shared/data [--dataset wn18rr] [--threads 1]
"""

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from kg.datasets import load_kg, with_reciprocals
from kg.models import build_model
from kg.training import KGTrainConfig, TrainingLoss, epoch_batches, make_optimizer, train_step

CONFIG = KGTrainConfig(model="complex", dim=200, batch_size=1000, init_scale=0.3, n3=0.1, optimizer="adagrad", lr=0.1,
                       precision="bf16")


def product_seconds(rows: int, width: int, entities: int, dtype: torch.dtype, reps: int = 5) -> float:
    a, b = torch.randn(rows, width).to(dtype), torch.randn(entities, width).to(dtype)
    for _ in range(2):
        a @ b.T
    start = time.perf_counter()
    for _ in range(reps):
        a @ b.T
    return (time.perf_counter() - start) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding kg/DATASET/")
    p.add_argument("--dataset", default="wn18rr", help="dataset (default wn18rr)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--steps", type=int, default=4, help="steps profiled, after 2 unprofiled (default 4)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_kg(args.dataset, args.data_dir, "drop", False)
    width = 2 * CONFIG.dim
    fp32, bf16 = (product_seconds(512, width, data.num_entities, dtype) for dtype in (torch.float32, torch.bfloat16))
    print(f"512 x {width} x {data.num_entities} product: float32 {fp32:.3f} s, bfloat16 {bf16:.3f} s ({fp32 / bf16:.1f}x)")
    model = build_model("complex", data.num_entities, data.num_relations, dim=CONFIG.dim, init_scale=CONFIG.init_scale,
                        gamma=0.0, p_norm=1, seed=0)
    optimizer, loss = make_optimizer(CONFIG, model), TrainingLoss(CONFIG, model)
    batches = epoch_batches(CONFIG, with_reciprocals(data.splits["train"], data.num_relations), 0, data.num_entities)
    for _, (batch, negatives, size) in zip(range(2), batches):
        train_step(loss, optimizer, batch, negatives, size)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _, (batch, negatives, size) in zip(range(args.steps), batches):
            train_step(loss, optimizer, batch, negatives, size)
    print(f"{(time.perf_counter() - start) / args.steps:.2f} s a step (profiled), {args.threads} thread(s)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
