"""The `--device cuda` paths of the diffusion and KG jobs on one GPU, through the jobs' own training
functions (what a Ray task runs; no Ray needed), against the CPU where a comparison is meaningful.

1. DDPM on 8gaussians, the same seed on cpu and cuda: the logged losses side by side.
2. DDPM on MNIST on cuda: samples/s, then FD in classifier features with floor and ceiling, bits/dim.
3. ComplEx on WN18RR on cuda (bf16 score matrices): seconds per epoch and test MRR within a budget.

Usage: python benchmarks/cuda_check.py --data-dir ../shared/data --out OUT [--mnist-steps 4000] [--kg-minutes 3]
"""

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from diffusion.job import DiffusionJobConfig, train_diffusion
from diffusion.trainer import DiffusionTrainConfig
from dni_pipeline.core.run_folder import RunFolder
from kg.job import KGJobConfig, train_kg
from kg.presets import preset
from kg.training import KGTrainConfig


def ddpm_toy(work: Path) -> dict:
    losses = {}
    for device in ("cpu", "cuda"):
        cfg = DiffusionJobConfig(dataset="8gaussians", train=DiffusionTrainConfig(steps=300, lr=2e-3, ema_decay=0.995),
                                 device=device, eval_samples=1000, log_every=50)
        folder = RunFolder(work / f"toy-{device}")
        summary = train_diffusion(cfg, folder)
        losses[device] = {"losses": [r["loss"] for r in folder.read_metrics()],
                          "energy_distance": summary["energy_distance"], "floor": summary["energy_distance_floor"]}
    losses["largest_loss_difference"] = max(abs(a - b) for a, b in zip(losses["cpu"]["losses"], losses["cuda"]["losses"]))
    return losses


def ddpm_mnist(work: Path, data_dir: str, steps: int) -> dict:
    cfg = DiffusionJobConfig(dataset="mnist", data_dir=data_dir, device="cuda", unet_widths=[32, 64],
                             train=DiffusionTrainConfig(steps=steps, batch_size=128, lr=5e-4, ema_decay=0.999),
                             eval_samples=2000, nll_images=256, checkpoint_every=steps)
    start = time.time()
    summary = train_diffusion(cfg, RunFolder(work / "mnist"))
    return {**{k: v for k, v in summary.items() if k != "config"}, "wall_seconds": round(time.time() - start, 1)}


def kg_wn18rr(work: Path, data_dir: str, minutes: float) -> dict:
    train = KGTrainConfig(**{**preset("wn18rr", "complex"), "precision": "bf16", "time_budget": minutes, "epochs": 1000})
    summary = train_kg(KGJobConfig(dataset="wn18rr", data_dir=data_dir, device="cuda", train=train), RunFolder(work / "kg"))
    return {"epochs": summary["epochs"], "train_seconds": summary["train_seconds"],
            "seconds_per_epoch": round(summary["train_seconds"] / summary["epochs"], 2),
            "valid_mrr": summary["valid"]["mrr"], "test_mrr": summary["test"]["mrr"], "config": dataclasses.asdict(train)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder holding mnist/ and kg/wn18rr/")
    p.add_argument("--out", type=Path, required=True, help="folder for cuda_check.json")
    p.add_argument("--mnist-steps", type=int, default=4000, help="DDPM steps on MNIST (default 4000)")
    p.add_argument("--kg-minutes", type=float, default=3.0, help="minutes of WN18RR training (default 3)")
    args = p.parse_args()
    assert torch.cuda.is_available(), "no GPU visible to torch"
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for name, check in (("ddpm_8gaussians_cpu_vs_cuda", lambda: ddpm_toy(Path(tmp))),
                            ("kg_wn18rr_cuda", lambda: kg_wn18rr(Path(tmp), args.data_dir, args.kg_minutes)),
                            ("ddpm_mnist_cuda", lambda: ddpm_mnist(Path(tmp), args.data_dir, args.mnist_steps))):
            start = time.time()
            results[name] = check()
            print(name, round(time.time() - start, 1), "s:", json.dumps(results[name])[:2000], flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "cuda_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
