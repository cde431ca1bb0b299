"""DDPM noise schedules: every derived quantity computed once, in float64, and nowhere else.

Equation numbers are those of Ho, Jain and Abbeel 2020 ("Denoising Diffusion Probabilistic Models");
the cosine schedule is Nichol and Dhariwal 2021 ("Improved DDPM"), eq. 17.
"""

import math

import numpy as np
import torch

__all__ = ["NoiseSchedule", "OBJECTIVES"]

OBJECTIVES = ("eps", "x0", "v")  # what the denoiser predicts


def _cosine_betas(timesteps: int, s: float, max_beta: float) -> np.ndarray:
    """abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2); beta_t = 1 - abar(t)/abar(t-1), capped at max_beta."""
    t = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    abar = np.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1 - abar[1:] / abar[:-1], max_beta)


class NoiseSchedule:
    """beta_1..beta_T and what follows from them. Index t runs 0..T-1 (the paper's t = 1..T)."""

    def __init__(self, kind: str = "linear", timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02, cosine_s: float = 0.008, max_beta: float = 0.999):
        if kind == "linear":
            betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
        elif kind == "cosine":
            betas = _cosine_betas(timesteps, cosine_s, max_beta)
        else:
            raise ValueError(f"unknown schedule '{kind}': use linear or cosine")
        self.timesteps = timesteps
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, posterior_variance)   (eqs. 6, 7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t = 0: clip the log to the next value so it stays finite.
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        # The "fixed large" reverse variance sigma_t^2 = beta_t, with the first entry made the
        # posterior's so the last sampling step stays sharp (as in the paper's code).
        self.fixed_large_log_variance = np.log(np.append(self.posterior_variance[1], betas[1:]))

    @staticmethod
    def gather(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] as `like`'s dtype and device, shaped to broadcast over its non-batch dimensions."""
        picked = torch.from_numpy(values).to(like.device)[t].to(like.dtype)
        return picked.reshape(-1, *([1] * (like.dim() - 1)))

    # -- the forward process -----------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (eq. 4)."""
        return self.gather(self.sqrt_alphas_cumprod, t, x0) * x0 + self.gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)   (eqs. 6, 7)."""
        mean = self.gather(self.posterior_mean_coef1, t, xt) * x0 + self.gather(self.posterior_mean_coef2, t, xt) * xt
        return mean, self.gather(self.posterior_variance, t, xt), self.gather(self.posterior_log_variance_clipped, t, xt)

    # -- conversions between what a denoiser predicts ----------------------------------------------
    def target(self, objective: str, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The regression target for `objective`: eps, x_0, or v = sqrt(abar) eps - sqrt(1 - abar) x_0."""
        if objective == "eps":
            return noise
        if objective == "x0":
            return x0
        if objective == "v":
            return (self.gather(self.sqrt_alphas_cumprod, t, x0) * noise
                    - self.gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)
        raise ValueError(f"unknown objective '{objective}': use one of {', '.join(OBJECTIVES)}")

    def predict_x0(self, objective: str, xt: torch.Tensor, t: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """x_0 implied by the model output at (x_t, t)."""
        a, s = self.gather(self.sqrt_alphas_cumprod, t, xt), self.gather(self.sqrt_one_minus_alphas_cumprod, t, xt)
        if objective == "eps":
            return (xt - s * output) / a
        if objective == "x0":
            return output
        if objective == "v":
            return a * xt - s * output
        raise ValueError(f"unknown objective '{objective}': use one of {', '.join(OBJECTIVES)}")

    def learned_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Improved DDPM's learned variance (eq. 15): log sigma_t^2 = f log beta_t + (1 - f) log beta~_t,
        f = (v + 1) / 2, for a model output v (nominally in [-1, 1])."""
        fraction = (v + 1) / 2
        return (fraction * self.gather(np.log(self.betas), t, v)
                + (1 - fraction) * self.gather(self.posterior_log_variance_clipped, t, v))

    def split(self, output: torch.Tensor, t: torch.Tensor, learned_variance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A model output into (prediction, learned log-variance or None): a variance-learning model
        returns twice the channels, the prediction first."""
        if not learned_variance:
            return output, None
        prediction, v = output.chunk(2, dim=1)
        return prediction, self.learned_log_variance(v, t)

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a, s = self.gather(self.sqrt_alphas_cumprod, t, xt), self.gather(self.sqrt_one_minus_alphas_cumprod, t, xt)
        return (xt - a * x0) / s
