"""Reverse-process samplers: DDPM ancestral sampling and DDIM (Song, Meng and Ermon 2020).

A denoiser is any callable `model(x_t, t) -> output` whose output is what `objective` names.
"""

from collections.abc import Callable

import numpy as np
import torch

from .schedule import NoiseSchedule

__all__ = ["ddpm_sample", "ddim_sample", "ddim_timesteps"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _device(model) -> torch.device:
    """Where a module's weights live (CPU for plain callables); noise is drawn on the CPU and moved."""
    parameters = getattr(model, "parameters", None)
    return next(parameters()).device if parameters else torch.device("cpu")


def _x0(schedule, objective, model, x, t, clip: float | None, learned_variance: bool = False):
    """The model's x_0, clamped to [-clip, clip] (the data's range) unless `clip` is None, and its
    learned log-variance (None for a fixed-variance model)."""
    prediction, log_variance = schedule.split(model(x, t), t, learned_variance)
    x0 = schedule.predict_x0(objective, x, t, prediction)
    return (x0 if clip is None else x0.clamp(-clip, clip)), log_variance


@torch.no_grad()
def ddpm_sample(model: Denoiser, schedule: NoiseSchedule, shape: tuple[int, ...], *, objective: str = "eps",
                variance: str = "fixed_small", clip: float | None = 1.0, generator: torch.Generator | None = None,
                learned_variance: bool = False) -> torch.Tensor:
    """Ancestral sampling, x_T ~ N(0, I) down to x_0 (Algorithm 2). `fixed_small` uses the true
    posterior variance, `fixed_large` uses beta_t, a variance-learning model its own; `clip` bounds
    the predicted x_0 (images: 1)."""
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"unknown variance '{variance}': use fixed_small or fixed_large")
    log_variances = schedule.posterior_log_variance_clipped if variance == "fixed_small" else schedule.fixed_large_log_variance
    device = _device(model)
    x = torch.randn(shape, generator=generator).to(device)
    for step in reversed(range(schedule.timesteps)):
        t = torch.full((shape[0],), step, dtype=torch.long, device=device)
        x0, learned = _x0(schedule, objective, model, x, t, clip, learned_variance)
        mean, _, _ = schedule.q_posterior(x0, x, t)
        if step > 0:
            log_variance = schedule.gather(log_variances, t, x) if learned is None else learned
            x = mean + torch.exp(0.5 * log_variance) * torch.randn(shape, generator=generator).to(device)
        else:
            x = mean
    return x


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
    """An evenly spaced, increasing sub-sequence of `steps` indices ending at T-1."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"DDIM needs 1..{timesteps} steps, got {steps}")
    return np.unique(np.round(np.linspace(0, timesteps - 1, steps)).astype(np.int64))


@torch.no_grad()
def ddim_sample(model: Denoiser, schedule: NoiseSchedule, shape: tuple[int, ...], *, steps: int = 50, eta: float = 0.0,
                objective: str = "eps", clip: float | None = 1.0, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None, learned_variance: bool = False) -> torch.Tensor:
    """DDIM on a sub-sequence of steps (Song et al., eq. 12); eta = 0 is deterministic given x_T,
    eta = 1 matches DDPM's posterior variance on the sub-sequence."""
    sequence = ddim_timesteps(schedule.timesteps, steps)
    device = _device(model)
    x = (torch.randn(shape, generator=generator) if noise is None else noise.clone()).to(device)
    abar = schedule.alphas_cumprod
    for i in reversed(range(len(sequence))):
        t = torch.full((shape[0],), int(sequence[i]), dtype=torch.long, device=device)
        x0, _ = _x0(schedule, objective, model, x, t, clip, learned_variance)  # DDIM sets its own variance
        eps = schedule.eps_from_x0(x, t, x0)
        a_t = abar[sequence[i]]
        a_prev = abar[sequence[i - 1]] if i > 0 else 1.0
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = np.sqrt(a_prev) * x0 + np.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(shape, generator=generator).to(device)
    return x.float()
