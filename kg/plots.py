"""A KG run's picture: training loss and validation MRR against epochs."""

from pathlib import Path

from dni_pipeline.core.plotting import plt, save_figure

__all__ = ["plot_kg_curves"]


def plot_kg_curves(path: Path, records: list[dict], title: str) -> None:
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
    save_figure(fig, path)
