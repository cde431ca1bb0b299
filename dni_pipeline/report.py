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


def _per_stage(steps: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values[step, stage]) for the steps that carry `key`, missing stages as NaN."""
    rows = [s for s in steps if key in s]
    values = np.array([[np.nan if v is None else v for v in s[key]] for s in rows], dtype=float)
    return np.array([s["step"] for s in rows]), values


def plot_curves(path: Path, steps: list[dict], evals: list[dict], title: str) -> None:
    """Training loss per step and test accuracy per evaluation; in SG modes also each stage's SG
    regression loss and the cosine similarity of its synthetic gradient to the true gradient."""
    panels = ["loss", "accuracy"] + [k for k in ("sg_loss", "sg_cosine") if any(k in s for s in steps)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    window = max(1, len(steps) // 100)
    loss = np.array([s["loss"] for s in steps])
    axes[0].plot(np.arange(len(_smooth(loss, window))) + window - 1, _smooth(loss, window))
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss (moving average)")
    axes[1].plot([e["epoch"] for e in evals], [100 * e["test_accuracy"] for e in evals], marker="o")
    axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    for ax, key in zip(axes[2:], panels[2:]):
        x, values = _per_stage(steps, key)
        for stage in range(values.shape[1]):
            if key == "sg_loss":
                ax.plot(x[window - 1:] if len(x) >= window else x, _smooth(values[:, stage], window), label=f"stage {stage}")
            else:
                ax.plot(x, values[:, stage], marker=".", label=f"stage {stage}")
        if key == "sg_loss":
            ax.set(xlabel="step", ylabel="SG regression loss", yscale="log", title="synthetic-gradient loss")
        else:
            ax.set(xlabel="step", ylabel="cosine(SG, true gradient)", ylim=(-0.1, 1.0), title="SG quality")
        ax.legend()
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
