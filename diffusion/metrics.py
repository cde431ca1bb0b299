"""Sample-quality metrics that need no downloaded weights: energy distance and MMD between point sets.

Every metric is meant to be reported with its floor (real against held-out real) and its ceiling
(real against Gaussian noise), so a number can be read as a position between the two.
"""

import torch

__all__ = ["energy_distance", "mmd_rbf", "with_floor_and_ceiling"]


def _mean_offdiag(d: torch.Tensor) -> torch.Tensor:
    n = d.shape[0]
    return (d.sum() - d.diagonal().sum()) / (n * (n - 1))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (unbiased within-set terms); 0 iff the laws are equal."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    return (2 * torch.cdist(x, y).mean() - _mean_offdiag(torch.cdist(x, x)) - _mean_offdiag(torch.cdist(y, y))).item()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> float:
    """Unbiased squared MMD with a Gaussian kernel; the bandwidth defaults to the median distance
    of the pooled sample (the median heuristic)."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    if bandwidth is None:
        pooled = torch.cat([x, y])
        bandwidth = torch.cdist(pooled, pooled).median().item() or 1.0
    k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth**2))  # noqa: E731
    return (_mean_offdiag(k(x, x)) + _mean_offdiag(k(y, y)) - 2 * k(x, y).mean()).item()


def with_floor_and_ceiling(metric, samples: torch.Tensor, reference: torch.Tensor, held_out: torch.Tensor,
                           generator: torch.Generator | None = None) -> dict:
    """The metric of `samples` against `reference`, the floor (`held_out` real points against the same
    reference) and the ceiling (standard Gaussian noise of the same shape against it)."""
    noise = torch.randn(samples.shape, generator=generator)
    return {"value": metric(samples, reference), "floor": metric(held_out, reference), "ceiling": metric(noise, reference)}
