"""A KG run's picture: training loss and validation MRR against epochs."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_curves"]


def plot_curves(path: Path, records: list[dict], title: str) -> None:
    fig, (loss_ax, mrr_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot([r["epoch"] for r in records], [r["loss"] for r in records])
    loss_ax.set(xlabel="epoch", ylabel="training loss", title=title)
    evaluated = [r for r in records if "valid_mrr" in r]
    for key in ("valid_mrr", "valid_hits@1", "valid_hits@10"):
        mrr_ax.plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker="o", label=key[6:])
    mrr_ax.set(xlabel="epoch", ylabel="filtered validation metric", ylim=(0, 1), title="validation")
    mrr_ax.legend()
    for ax in (loss_ax, mrr_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
