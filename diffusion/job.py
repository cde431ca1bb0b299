"""The diffusion job: one DDPM training run into a run folder, checkpoints while it trains (and
`resume` from the last one), then samples from the EMA weights, quality metrics with floor and
ceiling, plots and the summary; and what a sweep ranks its runs by.

Outputs: `summary.json`, `metrics.jsonl` (loss every `log_every` steps), `loss.png`, `samples.png`,
`checkpoint.pt` (model, EMA, optimizer, step, RNG state). Quality: energy distance and MMD for 2-D
data; for images the Frechet distance in the features of a cached classifier and the NLL bound in
bits per dimension; each distance with its floor (held-out real data) and ceiling (noise).

Data-parallel (`--workers N`, on Ray Train), every replica trains its shard of each batch and the
chief alone writes the folder, samples and evaluates: the folder is the same as one process's.
"""

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch

from dni_pipeline.core.data_parallel import SINGLE, Replica
from dni_pipeline.core.errors import UserError
from dni_pipeline.core.jobs import Job
from dni_pipeline.core.run_folder import RunFolder
from dni_pipeline.core.settings import CACHE_DIR

from .datasets import DIFFUSION_DATASETS, DiffusionData, load_diffusion_data
from .denoisers import MLPDenoiser, UNet
from .features import feature_net, frechet_distance
from .likelihood import bits_per_dim
from .metrics import energy_distance, mmd_rbf, with_floor_and_ceiling
from .plots import plot_loss, plot_samples
from .samplers import ddim_sample, ddpm_sample
from .schedule import OBJECTIVES
from .toys import TOYS
from .trainer import DiffusionTrainConfig, Trainer

__all__ = ["DIFFUSION_JOB", "DiffusionJobConfig", "build_denoiser", "sample", "train_diffusion"]

log = logging.getLogger("diffusion")


@dataclass
class DiffusionJobConfig:
    dataset: str = "moons"
    data_dir: str | None = None
    train: DiffusionTrainConfig = field(default_factory=lambda: DiffusionTrainConfig(steps=3000, lr=2e-3, ema_decay=0.995))
    width: int = 256  # MLP denoiser (2-D data)
    depth: int = 3
    unet_widths: list[int] = field(default_factory=lambda: [32, 64])  # UNet (images)
    attention: bool = True
    sampler: str = "ddim"  # ddim or ddpm
    sample_steps: int = 100  # DDIM steps
    eta: float = 0.0
    variance: str = "fixed_small"  # DDPM reverse variance: fixed_small or fixed_large
    device: str = "cpu"  # or cuda: model, batches and sampling on that device
    eval_samples: int = 2000
    nll_images: int = 64  # test images for the bits/dim bound (one model call per timestep each batch)
    checkpoint_every: int = 500
    log_every: int = 50

    def validate(self) -> "DiffusionJobConfig":
        checks = [
            (self.dataset in DIFFUSION_DATASETS,
             f"unknown dataset '{self.dataset}': choose one of {', '.join(DIFFUSION_DATASETS)}"),
            (self.train.objective in OBJECTIVES,
             f"unknown objective '{self.train.objective}': use one of {', '.join(OBJECTIVES)}"),
            (self.train.schedule in ("linear", "cosine"), f"unknown schedule '{self.train.schedule}': use linear or cosine"),
            (self.sampler in ("ddim", "ddpm"), f"unknown sampler '{self.sampler}': use ddim or ddpm"),
            (self.variance in ("fixed_small", "fixed_large"),
             f"unknown variance '{self.variance}': use fixed_small or fixed_large"),
            (self.train.steps >= 1 and self.train.batch_size >= 1, "--steps and --batch-size must be at least 1"),
            (1 <= self.sample_steps <= self.train.timesteps, f"--sample-steps must be 1..{self.train.timesteps}"),
            (self.train.lr > 0 and self.eval_samples >= 2, "--lr must be positive and --eval-samples at least 2"),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "--checkpoint-every and --log-every must be at least 1"),
            (self.device in ("cpu", "cuda"), f"invalid device '{self.device}': use cpu or cuda"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self


def build_denoiser(cfg: DiffusionJobConfig, data: DiffusionData) -> torch.nn.Module:
    torch.manual_seed(cfg.train.seed)
    outputs = 2 if cfg.train.learn_variance else 1  # the variance's channels follow the prediction's
    channels = data.train.shape[1]
    if data.is_image:
        return UNet(channels=channels, widths=tuple(cfg.unet_widths), attention=cfg.attention, out_channels=outputs * channels)
    return MLPDenoiser(dim=channels, width=cfg.width, depth=cfg.depth, out_dim=outputs * channels)


def sample(cfg: DiffusionJobConfig, trainer: Trainer, count: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """`count` samples from the EMA weights with the configured sampler. The predicted x_0 is clipped
    to the data's range: [-1, 1] for images, 1.5 x the largest coordinate of the training set for
    2-D data (at large t an eps-model's x_0 divides by sqrt(abar_t) ~ 0.006 and can fly off)."""
    generator = torch.Generator().manual_seed(seed)
    clip = 1.0 if len(shape) > 1 else 1.5 * trainer.data.abs().max().item()
    model = trainer.ema.eval()
    if cfg.sampler == "ddim":
        return ddim_sample(model, trainer.schedule, (count, *shape), steps=cfg.sample_steps, eta=cfg.eta,
                           objective=cfg.train.objective, clip=clip, generator=generator,
                           learned_variance=cfg.train.learn_variance)
    return ddpm_sample(model, trainer.schedule, (count, *shape), objective=cfg.train.objective,
                       variance=cfg.variance, clip=clip, generator=generator, learned_variance=cfg.train.learn_variance)


def train_diffusion(cfg: DiffusionJobConfig, folder: RunFolder, resume: bool = False, progress=None,
                    replica: Replica = SINGLE) -> dict | None:
    """Train (or continue), evaluate and write the run folder; return the summary (None on replicas
    other than the chief). `progress` is a tqdm-like class for a progress bar (inside a Ray task,
    ray.experimental.tqdm_ray.tqdm), or None."""
    cfg.validate()
    data = load_diffusion_data(cfg.dataset, cfg.data_dir, seed=cfg.train.seed, eval_points=cfg.eval_samples)
    trainer = Trainer(cfg.train, build_denoiser(cfg, data), data.train, device=replica.device(cfg.device), replica=replica)
    checkpoint = folder.checkpoint
    if resume:
        trainer.load(replica.checkpoint_to_load(folder))
        if replica.chief:
            folder.trim_metrics(lambda r: r["step"] <= trainer.step)
            log.info("resumed %s at step %d", folder.path, trainer.step)
    elif replica.chief:
        folder.create()
        folder.write_config(cfg)
        folder.trim_metrics(lambda r: r["step"] <= 0)  # an attempt that died before its first checkpoint
    start, losses, steps_before = time.time(), [], trainer.step
    bar = progress(desc=f"ddpm {cfg.dataset}", total=cfg.train.steps, unit="step") if progress else None
    if bar:
        bar.update(trainer.step)
    while trainer.step < cfg.train.steps:
        losses.append(trainer.train_step())
        if trainer.step % cfg.log_every == 0 or trainer.step == cfg.train.steps:
            if replica.chief:
                folder.append_metrics([{"step": trainer.step, "loss": sum(losses) / len(losses)}])
            if bar:
                bar.update(trainer.step - bar.n)
                bar.set_description(f"ddpm {cfg.dataset} loss {sum(losses) / len(losses):.4f}")
            losses = []
        if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.train.steps:
            if replica.chief:
                trainer.save(checkpoint)
            replica.checkpointed(checkpoint, {"step": trainer.step})
    if bar:
        bar.close()
    if not replica.chief:
        return None
    train_seconds = time.time() - start
    summary = {"dataset": cfg.dataset, "steps": trainer.step, "planned_steps": cfg.train.steps,
               "train_seconds": round(train_seconds, 3), "workers": replica.world,
               "samples_per_second": round((trainer.step - steps_before) * cfg.train.batch_size / max(train_seconds, 1e-9), 1),
               "resumed": resume, "objective": cfg.train.objective, "schedule": cfg.train.schedule,
               "sampler": cfg.sampler, "sample_steps": cfg.sample_steps if cfg.sampler == "ddim" else cfg.train.timesteps}
    samples = sample(cfg, trainer, cfg.eval_samples, tuple(data.train.shape[1:]), seed=cfg.train.seed + 100).cpu()
    noise = torch.Generator().manual_seed(cfg.train.seed + 200)
    if data.is_image:
        net = feature_net(data.name, data.train, data.train_labels, CACHE_DIR)  # small: on the CPU
        with torch.no_grad():
            fd = lambda x, y: frechet_distance(net.features(x.clamp(-1, 1)), net.features(y))  # noqa: E731
            n = min(len(samples), len(data.held_out))  # samples and the floor's real images: equal counts
            scores = with_floor_and_ceiling(fd, samples[:n], data.reference, data.held_out[:n], generator=noise)
        summary.update(fd=round(scores["value"], 4), fd_floor=round(scores["floor"], 4), fd_ceiling=round(scores["ceiling"], 4))
        held_out = data.held_out[: cfg.nll_images].to(trainer.device)
        summary["bits_per_dim"] = round(bits_per_dim(trainer.ema, trainer.schedule, held_out,
                                                     objective=cfg.train.objective, variance=cfg.variance,
                                                     generator=noise, learned_variance=cfg.train.learn_variance), 4)
        summary["bits_per_dim_ceiling"] = 8.0  # a uniform distribution over the 256 levels of each pixel
    else:
        for name, metric in (("energy_distance", energy_distance), ("mmd", mmd_rbf)):
            scores = with_floor_and_ceiling(metric, samples, data.reference, data.held_out, generator=noise)
            summary.update({name: round(scores["value"], 6), f"{name}_floor": round(scores["floor"], 6),
                            f"{name}_ceiling": round(scores["ceiling"], 6)})
    summary["config"] = dataclasses.asdict(cfg)
    plot_loss(folder.file("loss.png"), folder.read_metrics(), f"DDPM on {data.name}")
    plot_samples(folder.file("samples.png"), samples, data.reference if not data.is_image else None)
    folder.write_summary(summary)
    return summary


def rank_metric(dataset: str) -> str:
    """The quality metric sweeps rank by (lower is better, reported with floor and ceiling)."""
    return "energy_distance" if dataset in TOYS else "fd"


def _trial_figures(summary: dict) -> dict:
    metric = rank_metric(summary["dataset"])
    return {metric: summary[metric], f"{metric}_floor": summary[f"{metric}_floor"],
            f"{metric}_ceiling": summary[f"{metric}_ceiling"], "train_seconds": summary["train_seconds"]}


def _selection(cfg: DiffusionJobConfig) -> tuple[str, bool]:
    return rank_metric(cfg.dataset), False


DIFFUSION_JOB = Job(name="diffusion", config_class=DiffusionJobConfig, train=train_diffusion,
                    trial_figures=_trial_figures, selection=_selection)
