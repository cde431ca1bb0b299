"""Frechet distance in the feature space of a small classifier the project trains itself, so image
quality is measured offline (no Inception weights). The classifier is trained once per dataset and
cached; its penultimate layer (128 units) is the feature space."""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dni_pipeline.core.files import atomic_path

__all__ = ["FeatureNet", "feature_net", "frechet_distance"]

log = logging.getLogger("diffusion")


class FeatureNet(nn.Module):
    """Two 3x3 conv layers with pooling and a 128-unit layer; inputs are images in [-1, 1]."""

    def __init__(self, channels: int, size: int, classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Flatten(), nn.Linear(64 * (-(-size // 4)) ** 2, 128), nn.ReLU())
        self.head = nn.Linear(128, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def feature_net(name: str, images: torch.Tensor, labels: torch.Tensor, cache_dir: Path, epochs: int = 2,
                seed: int = 0) -> FeatureNet:
    """The cached classifier for dataset `name`, trained (and cached atomically) on first use."""
    classes = int(labels.max()) + 1
    net = FeatureNet(images.shape[1], images.shape[-1], classes)
    path = cache_dir / f"fd-features-{name}-{images.shape[-1]}px-{classes}.pt"
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    log.info("training the %s feature classifier for the Frechet distance (cached at %s)", name, path)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(128):
            loss = F.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    return net.eval()


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between Gaussians fitted to two
    feature sets (rows are samples), in float64."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    return ((mu_a - mu_b).square().sum() + torch.trace(cov_a + cov_b - 2 * cross)).item()
