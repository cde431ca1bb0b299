"""The DDPM variational bound on the negative log-likelihood, in bits per dimension (Ho et al. 2020,
eq. 5; the discretized Gaussian decoder of their section 3.3), for images scaled to [-1, 1] from 8 bits.

L = KL(q(x_T | x_0) || N(0, I)) + sum_{t>1} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) - log p(x_0 | x_1)
"""

import math

import torch

from .schedule import NoiseSchedule

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "vlb_term", "bits_per_dim"]


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log P(x) for x on the 256-level grid of [-1, 1], each level a bin of width 2/255 under a Gaussian;
    the outermost bins extend to infinity. Elementwise, in nats."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_minus = _std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta))


def vlb_term(schedule: NoiseSchedule, x0, xt, t, model_mean, model_logvar) -> torch.Tensor:
    """The bound's term for each example's t, elementwise in nats: at t = 0 the decoder's
    -log p(x_0 | x_1) (discretized for images, a density for 2-D points), else
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))."""
    true_mean, _, true_logvar = schedule.q_posterior(x0, xt, t)
    kl = normal_kl(true_mean, true_logvar, model_mean, model_logvar)
    if x0.dim() == 4:
        decoder = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar)
    else:
        decoder = 0.5 * (math.log(2 * math.pi) + model_logvar + (x0 - model_mean) ** 2 * torch.exp(-model_logvar))
    first = (t == 0).reshape(-1, *([1] * (x0.dim() - 1)))
    return torch.where(first, decoder, kl)


@torch.no_grad()
def bits_per_dim(model, schedule: NoiseSchedule, x0: torch.Tensor, *, objective: str = "eps",
                 variance: str = "fixed_small", generator: torch.Generator | None = None,
                 learned_variance: bool = False) -> float:
    """The bound averaged over the images of `x0` (one model call per timestep), in bits per dimension."""
    log_variances = schedule.posterior_log_variance_clipped if variance == "fixed_small" else schedule.fixed_large_log_variance
    dims = x0[0].numel()
    total = torch.zeros(len(x0), dtype=torch.float64, device=x0.device)
    for step in range(schedule.timesteps):
        t = torch.full((len(x0),), step, dtype=torch.long, device=x0.device)
        xt = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device))
        prediction, learned = schedule.split(model(xt, t), t, learned_variance)
        model_mean, _, _ = schedule.q_posterior(schedule.predict_x0(objective, xt, t, prediction).clamp(-1.0, 1.0), xt, t)
        model_logvar = schedule.gather(log_variances, t, xt) if learned is None else learned
        total += vlb_term(schedule, x0, xt, t, model_mean, model_logvar).flatten(1).sum(1).double()
    last = torch.full((len(x0),), schedule.timesteps - 1, dtype=torch.long, device=x0.device)
    prior_mean = schedule.gather(schedule.sqrt_alphas_cumprod, last, x0) * x0
    prior_logvar = torch.log(schedule.gather(1.0 - schedule.alphas_cumprod, last, x0.double())).to(x0.dtype)
    total += normal_kl(prior_mean, prior_logvar, torch.zeros_like(x0), torch.zeros_like(x0)).flatten(1).sum(1).double()
    return (total / (dims * math.log(2.0))).mean().item()
