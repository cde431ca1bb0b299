"""`dni-pipeline diffusion train|sweep|sample`: DDPM runs as Ray tasks on the local Ray or a cluster."""

import argparse
import dataclasses
import json
from pathlib import Path

from dni_pipeline.core.job_cli import JobCommands, add_job_commands
from dni_pipeline.core.run_folder import RunFolder

from .datasets import DIFFUSION_DATASETS, load_diffusion_data
from .job import DIFFUSION_JOB, DiffusionJobConfig
from .toys import TOYS

__all__ = ["add_commands"]

RUN = DiffusionJobConfig()
# Images: a UNet, a smaller learning rate and a slower EMA than the 2-D defaults.
IMAGE_TRAIN = {"steps": 4000, "batch_size": 64, "lr": 5e-4, "ema_decay": 0.999}


def _run_flags(p: argparse.ArgumentParser) -> None:
    t = RUN.train
    p.add_argument("--dataset", default=RUN.dataset, help=f"{', '.join(DIFFUSION_DATASETS)} (default {RUN.dataset})")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (for --dataset mnist)")
    p.add_argument("--steps", type=int, help=f"training steps (default {t.steps} for 2-D, {IMAGE_TRAIN['steps']} for images)")
    p.add_argument("--batch-size", type=int,
                   help=f"batch size (default {t.batch_size} for 2-D, {IMAGE_TRAIN['batch_size']} for images)")
    p.add_argument("--lr", type=float, help=f"AdamW learning rate (default {t.lr:g} for 2-D, {IMAGE_TRAIN['lr']:g} for images)")
    p.add_argument("--warmup", type=int, help=f"steps of linear warm-up (default {t.warmup})")
    p.add_argument("--grad-clip", type=float, help=f"gradient-norm clip (default {t.grad_clip:g})")
    p.add_argument("--ema-decay", type=float, help=f"EMA decay of the sampled weights (default {t.ema_decay:g} for 2-D, {IMAGE_TRAIN['ema_decay']:g} for images)")
    p.add_argument("--objective", help=f"eps (L_simple), x0 or v (default {t.objective})")
    p.add_argument("--learn-variance", action="store_true", default=None,
                   help="learn the reverse variance with the hybrid loss L_simple + lambda L_vlb (Improved DDPM)")
    p.add_argument("--vlb-weight", type=float, help=f"lambda of the hybrid loss (default {t.vlb_weight:g})")
    p.add_argument("--schedule", help=f"linear (1e-4 to 0.02) or cosine (default {t.schedule})")
    p.add_argument("--timesteps", type=int, help=f"T (default {t.timesteps})")
    p.add_argument("--seed", type=int, help=f"seed of weights, batches and noise (default {t.seed})")
    p.add_argument("--width", type=int, help=f"MLP denoiser width for 2-D data (default {RUN.width})")
    p.add_argument("--depth", type=int, help=f"MLP denoiser residual blocks (default {RUN.depth})")
    p.add_argument("--unet-widths",
                   help=f"UNet channels per resolution, comma separated (default {','.join(map(str, RUN.unet_widths))})")
    p.add_argument("--no-attention", action="store_true", help="UNet without self-attention at the lowest resolution")
    _sampler_flags(p)
    p.add_argument("--device", help="cpu or cuda (with --num-gpus 1) (default cpu)")
    p.add_argument("--eval-samples", type=int, help=f"samples drawn to measure quality (default {RUN.eval_samples})")
    p.add_argument("--nll-images", type=int,
                   help=f"held-out images for the bits/dim bound, T model calls each (default {RUN.nll_images})")
    p.add_argument("--checkpoint-every", type=int, help=f"steps between checkpoints (default {RUN.checkpoint_every})")


def _sampler_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", help=f"ddim or ddpm (ancestral) (default {RUN.sampler})")
    p.add_argument("--sample-steps", type=int, help=f"DDIM steps (default {RUN.sample_steps})")
    p.add_argument("--eta", type=float, help=f"DDIM eta: 0 deterministic, 1 DDPM-like (default {RUN.eta:g})")
    p.add_argument("--variance", help=f"DDPM reverse variance: fixed_small or fixed_large (default {RUN.variance})")


def _config(args: argparse.Namespace) -> DiffusionJobConfig:
    """Defaults for the dataset, then the flags that were given."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    image = args.dataset not in TOYS
    train_names = {f.name for f in dataclasses.fields(RUN.train)}
    train = dataclasses.replace(RUN.train, **{**(IMAGE_TRAIN if image else {}),
                                              **{k: v for k, v in given.items() if k in train_names}})
    run_names = {f.name for f in dataclasses.fields(RUN)} - {"train"}
    values = {k: v for k, v in given.items() if k in run_names}
    if "unet_widths" in values:
        values["unet_widths"] = [int(w) for w in values["unet_widths"].split(",")]
    values["attention"] = not args.no_attention
    return dataclasses.replace(RUN, train=train, **values).validate()


def _check_data(cfg: DiffusionJobConfig) -> None:
    load_diffusion_data(cfg.dataset, cfg.data_dir, eval_points=2)


def _show_summary(summary: dict) -> None:
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from .job import build_denoiser, sample
    from .plots import plot_samples
    from .trainer import Trainer

    folder = RunFolder.existing(args.run)
    cfg = folder.read_config(DiffusionJobConfig)
    cfg = dataclasses.replace(cfg, **{k: getattr(args, k) for k in ("sampler", "sample_steps", "eta", "variance")
                                      if getattr(args, k) is not None}).validate()
    data = load_diffusion_data(cfg.dataset, cfg.data_dir, eval_points=2)
    trainer = Trainer(cfg.train, build_denoiser(cfg, data), data.train, device=cfg.device)
    trainer.load(folder.checkpoint)
    samples = sample(cfg, trainer, args.count, tuple(data.train.shape[1:]), seed=args.seed).cpu()
    torch.save(samples, args.out.with_suffix(".pt"))
    plot_samples(args.out, samples, data.reference if not data.is_image else None)
    print(f"{args.count} samples in {args.out} and {args.out.with_suffix('.pt')}")


COMMANDS = JobCommands(
    job=DIFFUSION_JOB, help="DDPM training jobs as Ray tasks", train_description=(
        "Train a DDPM as one Ray task; the run folder gets checkpoint.pt, metrics.jsonl, loss.png, samples.png "
        "and summary.json (energy distance and MMD with floor and ceiling for 2-D data; Frechet distance in "
        "classifier features and bits/dim for images)."),
    add_flags=_run_flags, config_from_args=_config, check_data=_check_data, extendable=("steps",),
    default_out=lambda cfg: f"diffusion-{cfg.dataset}", show_summary=_show_summary)


def add_commands(commands) -> None:
    """Register `diffusion train|sweep` (the shared skeleton) and `diffusion sample`."""
    group = add_job_commands(commands, COMMANDS)
    samp = group.add_parser("sample", help="draw samples from a trained run's EMA weights")
    samp.add_argument("--run", required=True, help="a run folder written by `diffusion train`")
    samp.add_argument("--count", type=int, default=1000, help="number of samples (default 1000)")
    samp.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
    samp.add_argument("--out", type=Path, required=True, help="PNG to write (a .pt with the tensor goes beside it)")
    _sampler_flags(samp)
    samp.set_defaults(func=cmd_sample)
