"""Data-parallel speed on this machine, and an estimate for workers on separate machines.

Measured, through the real paths on a local Ray: DDPM samples/s (MNIST UNet) and KG seconds per
epoch (ComplEx on a KG dataset with its preset), each as one Ray task with every core (`--workers 1`)
and as 2 Ray Train workers with one core each (`--workers 2`). On one machine the two workers share
its cores, so the second worker adds no compute: the ratio shows the cost of the collectives.

Estimated for 2 workers on 2 separate machines like this one: each computes half the global batch
with all its cores (timed here, in one process, on half batches) and then all-reduces the gradient;
a ring all-reduce of G bytes over N workers moves 2 (N - 1) / N x G bytes through each link, timed
at `--link-gbps`. Step time = half-batch compute + that transfer (no overlap assumed, so the estimate
is pessimistic where DDP overlaps them).

Usage: python benchmarks/data-parallel/data_parallel_speed.py --data-dir ../shared/data --out runs/dp-speed
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import ray
import torch

from diffusion.datasets import load_diffusion_data
from diffusion.job import DIFFUSION_JOB, DiffusionJobConfig, build_denoiser
from diffusion.trainer import DiffusionTrainConfig, Trainer
from dni_pipeline.core.data_parallel import run_data_parallel
from dni_pipeline.core.jobs import submit_job
from dni_pipeline.core.ray_session import Resources, start_local_ray
from kg.datasets import load_kg, with_reciprocals
from kg.job import KG_JOB, KGJobConfig
from kg.models import build_model
from kg.presets import preset
from kg.training import KGTrainConfig, TrainingLoss, epoch_batches, make_optimizer, train_step


def run_both(job, cfg, out: Path, cores: int) -> dict:
    """The run as one Ray task with every core, then as 2 Ray Train workers of one core each."""
    one = ray.get(submit_job(job, cfg, str(out / "workers-1"), Resources(num_cpus=cores)))
    two = run_data_parallel(job, dataclasses.asdict(cfg), str(out / "workers-2"), 2, Resources(num_cpus=cores // 2))
    return {"workers-1": one, "workers-2": two}


def gradient_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def ring_seconds(size: int, workers: int, gbps: float) -> float:
    return 2 * (workers - 1) / workers * size * 8 / (gbps * 1e9)


def diffusion(args, out: Path) -> dict:
    train = DiffusionTrainConfig(steps=args.ddpm_steps, batch_size=args.ddpm_batch, lr=5e-4, ema_decay=0.999,
                                 warmup=10)
    cfg = DiffusionJobConfig(dataset="mnist", data_dir=args.data_dir, train=train, eval_samples=100, nll_images=2,
                             sample_steps=5, checkpoint_every=args.ddpm_steps)
    runs = run_both(DIFFUSION_JOB, cfg, out / "ddpm", args.cores)
    # A half batch with every core, in this process: one separate machine's share of a step.
    data = load_diffusion_data("mnist", args.data_dir, eval_points=2)
    half = Trainer(dataclasses.replace(train, batch_size=args.ddpm_batch // 2), build_denoiser(cfg, data), data.train)
    for _ in range(3):
        half.train_step()
    start = time.perf_counter()
    for _ in range(args.timing_steps):
        half.train_step()
    compute = (time.perf_counter() - start) / args.timing_steps
    transfer = ring_seconds(gradient_bytes(half.model), 2, args.link_gbps)
    return {"samples_per_second": {k: v["samples_per_second"] for k, v in runs.items()},
            "estimate_2_machines": {"half_batch_compute_s": round(compute, 4), "allreduce_s": round(transfer, 4),
                                    "samples_per_second": round(args.ddpm_batch / (compute + transfer), 1)}}


def kg(args, out: Path) -> dict:
    train = KGTrainConfig(**{**preset(args.kg_dataset, "complex"), "epochs": 1, "eval_every": 1})
    cfg = KGJobConfig(dataset=args.kg_dataset, data_dir=args.data_dir, train=train)
    runs = run_both(KG_JOB, cfg, out / "kg", args.cores)
    data = load_kg(args.kg_dataset, args.data_dir, "drop", False)
    model = build_model("complex", data.num_entities, data.num_relations, dim=train.dim, init_scale=train.init_scale,
                        gamma=train.gamma, p_norm=train.p_norm, seed=train.seed)
    optimizer, loss = make_optimizer(train, model), TrainingLoss(train, model)
    triples = with_reciprocals(data.splits["train"], data.num_relations)
    half = dataclasses.replace(train, batch_size=train.batch_size // 2)
    batches = epoch_batches(half, triples, 0, data.num_entities)
    for _, (batch, negatives, size) in zip(range(3), batches):
        train_step(loss, optimizer, batch, negatives, size)
    start = time.perf_counter()
    for _, (batch, negatives, size) in zip(range(args.timing_steps), batches):
        train_step(loss, optimizer, batch, negatives, size)
    compute = (time.perf_counter() - start) / args.timing_steps
    steps = -(-len(triples) // train.batch_size)
    transfer = ring_seconds(gradient_bytes(model), 2, args.link_gbps)
    return {"seconds_per_epoch": {k: round(v["train_seconds"] / v["epochs"], 1) for k, v in runs.items()},
            "test_mrr_after_1_epoch": {k: round(v["test"]["mrr"], 4) for k, v in runs.items()},
            "estimate_2_machines": {"steps_per_epoch": steps, "half_batch_compute_s": round(compute, 4),
                                    "allreduce_s": round(transfer, 4),
                                    "seconds_per_epoch": round(steps * (compute + transfer), 1)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding mnist/ and kg/DATASET/")
    p.add_argument("--out", type=Path, required=True, help="new folder for the runs and data_parallel_speed.json")
    p.add_argument("--cores", type=int, default=2, help="cores of this machine to use (default 2)")
    p.add_argument("--ddpm-steps", type=int, default=300, help="DDPM steps per run (default 300)")
    p.add_argument("--ddpm-batch", type=int, default=64, help="DDPM global batch (default 64)")
    p.add_argument("--kg-dataset", default="wn18rr", help="KG dataset, one epoch per run (default wn18rr)")
    p.add_argument("--timing-steps", type=int, default=20, help="half-batch steps timed for the estimate (default 20)")
    p.add_argument("--link-gbps", type=float, default=10.0, help="link between machines, Gbit/s (default 10)")
    args = p.parse_args()
    torch.set_num_threads(args.cores)
    args.out.mkdir(parents=True)
    start_local_ray(args.cores, include_dashboard=True)  # Ray Train's controller polls its state API
    results = {"cores": args.cores, "link_gbps": args.link_gbps, "ddpm_mnist": diffusion(args, args.out),
               "kg_" + args.kg_dataset: kg(args, args.out)}
    (args.out / "data_parallel_speed.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
