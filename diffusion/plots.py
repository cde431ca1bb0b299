"""A diffusion run's pictures: the loss curve and the samples (a grid of images, or 2-D points over data)."""

from pathlib import Path

import torch

from dni_pipeline.core.plotting import plt, save_figure

__all__ = ["plot_loss", "plot_samples"]


def plot_loss(path: Path, records: list[dict], title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records])
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title=title)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_samples(path: Path, samples: torch.Tensor, reference: torch.Tensor | None) -> None:
    """Images (N, C, H, W) in [-1, 1] as a square grid of the first 64; 2-D points over `reference`."""
    fig, ax = plt.subplots(figsize=(6, 6))
    if samples.dim() == 4:
        grid = samples[:64, 0].clamp(-1, 1).add(1).div(2)
        n = int(len(grid) ** 0.5)
        height, width = grid.shape[1:]
        tiles = grid[: n * n].reshape(n, n, height, width).permute(0, 2, 1, 3).reshape(n * height, n * width)
        ax.imshow(tiles.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    else:
        ax.scatter(*reference.T.numpy(), s=2, alpha=0.4, label="held-out data")
        ax.scatter(*samples.T.numpy(), s=2, alpha=0.4, label="samples (EMA)")
        low, high = reference.min(0).values - 0.5, reference.max(0).values + 0.5
        ax.set(xlim=(low[0].item(), high[0].item()), ylim=(low[1].item(), high[1].item()), aspect="equal",
               title=f"{len(samples)} samples; axes span the data (+0.5)")
        ax.legend(markerscale=5)
    save_figure(fig, path)
