"""What a finished run shows a person: PNG curves and a plain-text summary table."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_curves", "format_table"]


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if len(values) < width or width < 2:
        return values
    return np.convolve(values, np.ones(width) / width, mode="valid")


def plot_curves(path: Path, steps: list[dict], epochs: list[dict], title: str) -> None:
    """Training loss per step, test accuracy per epoch, and each stage's SG regression loss."""
    has_sg = any("sg_loss" in s for s in steps)
    fig, axes = plt.subplots(1, 3 if has_sg else 2, figsize=(15 if has_sg else 10, 4))
    window = max(1, len(steps) // 100)
    loss = np.array([s["loss"] for s in steps])
    axes[0].plot(np.arange(len(_smooth(loss, window))) + window - 1, _smooth(loss, window))
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss (moving average)")
    axes[1].plot([e["epoch"] for e in epochs], [100 * e["test_accuracy"] for e in epochs], marker="o")
    axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    if has_sg:
        sg = np.array([s.get("sg_loss") or [np.nan] for s in steps], dtype=float)
        for stage in range(sg.shape[1]):
            axes[2].plot(_smooth(sg[:, stage], window), label=f"stage {stage}")
        axes[2].set(xlabel="step", ylabel="SG regression loss", yscale="log", title="synthetic-gradient loss")
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Rows of dicts as an aligned text table; `columns` are (key, heading) pairs."""
    cells = [[heading for _, heading in columns]]
    for row in rows:
        cells.append([_cell(row.get(key)) for key, _ in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " ".join(_cell(v) for v in value)
    return "-" if value is None else str(value)
