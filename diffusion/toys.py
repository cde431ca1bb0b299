"""2-D toy distributions for diffusion: two moons, a swiss roll, eight Gaussians; each scaled to
roughly unit spread around the origin."""

import math

import numpy as np
import torch

__all__ = ["TOYS", "sample_toy"]

TOYS = ("moons", "swiss_roll", "8gaussians")


def sample_toy(name: str, count: int, seed: int) -> torch.Tensor:
    """`count` points of the named toy, float32, (count, 2), reproducible from `seed`."""
    from sklearn.datasets import make_moons, make_swiss_roll

    rng = np.random.default_rng(seed)
    if name == "moons":
        points, _ = make_moons(count, noise=0.05, random_state=seed)
        points = (points - [0.5, 0.25]) / [1.0, 0.5]
    elif name == "swiss_roll":
        points, _ = make_swiss_roll(count, noise=0.3, random_state=seed)
        points = points[:, [0, 2]] / 10.0
    elif name == "8gaussians":
        angles = rng.integers(0, 8, count) * (2 * math.pi / 8)
        points = np.stack([np.cos(angles), np.sin(angles)], 1) + 0.05 * rng.standard_normal((count, 2))
    else:
        raise ValueError(f"unknown toy '{name}': use one of {', '.join(TOYS)}")
    return torch.from_numpy(np.asarray(points, dtype=np.float32))
