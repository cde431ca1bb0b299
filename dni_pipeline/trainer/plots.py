"""The unlocked trainer's pictures: a run's curves, and the benchmark's throughput, timelines, latency
and accuracy-over-time pictures."""

from pathlib import Path

import numpy as np

from dni_pipeline.core.plotting import plt, save_figure

from .stage import WORK_KINDS

__all__ = ["plot_training_curves", "plot_throughput", "plot_timeline", "plot_latency", "plot_accuracy_vs_time", "plot_sg_cosine",
           "plot_time_to_accuracy"]

COLORS = {"forward": "#4C72B0", "backward": "#DD8452", "synthetic": "#55A868", "transport": "#C44E52"}


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if len(values) < width or width < 2:
        return values
    return np.convolve(values, np.ones(width) / width, mode="valid")


def _per_stage(steps: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values[step, stage]) for the steps that carry `key`, missing stages as NaN."""
    rows = [s for s in steps if key in s]
    values = np.array([[np.nan if v is None else v for v in s[key]] for s in rows], dtype=float)
    return np.array([s["step"] for s in rows]), values


def headline(evals: list[dict]) -> tuple[str, str, float]:
    """The evaluation figure a run is judged by, its axis label and scale: bits per token for a language
    model, accuracy for a classifier, else the loss."""
    first = evals[0] if evals else {}
    if "test_bits" in first:
        return "test_bits", "test bits per token", 1.0
    if "test_accuracy" in first:
        return "test_accuracy", "test accuracy (%)", 100.0
    return "test_loss", "test loss", 1.0


def plot_training_curves(path: Path, steps: list[dict], evals: list[dict], title: str) -> None:
    """Training loss per step and test accuracy per evaluation; in SG modes also each stage's SG
    regression loss and the cosine similarity of its synthetic gradient to the true gradient, and under
    synthetic inputs each input model's R^2 on the real inputs."""
    panels = ["loss", "accuracy"] + [k for k in ("sg_loss", "sg_cosine", "input_r2") if any(k in s for s in steps)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    scored = [s for s in steps if "loss" in s]  # under synthetic inputs: the steps relayed through every stage
    window = max(1, len(scored) // 100)
    loss, x = _smooth(np.array([s["loss"] for s in scored]), window), np.array([s["step"] for s in scored])
    axes[0].plot(x[len(x) - len(loss):], loss)
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log", title="loss (moving average)")
    key, label, scale = headline(evals)
    axes[1].plot([e["epoch"] for e in evals], [scale * e[key] for e in evals], marker="o")
    axes[1].set(xlabel="epoch", ylabel=label, title=label.removesuffix(" (%)"))
    for ax, key in zip(axes[2:], panels[2:]):
        x, values = _per_stage(steps, key)
        for stage in range(values.shape[1]):
            if np.isnan(values[:, stage]).all():  # stage 0 has no input model
                continue
            if key == "sg_loss":
                ax.plot(x[window - 1:] if len(x) >= window else x, _smooth(values[:, stage], window), label=f"stage {stage}")
            else:
                ax.plot(x, values[:, stage], marker=".", label=f"stage {stage}")
        if key == "sg_loss":
            ax.set(xlabel="step", ylabel="SG regression loss", yscale="log", title="synthetic-gradient loss")
        elif key == "input_r2":
            ax.set(xlabel="step", ylabel="R^2 of I(x) on the real input", ylim=(-0.1, 1.0), title="synthetic inputs")
        else:
            ax.set(xlabel="step", ylabel="cosine(SG, true gradient)", ylim=(-0.1, 1.0), title="SG quality")
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_throughput(path: Path, entries: list[dict]) -> None:
    """Median samples/s per mode, a bar per stage count, whiskers from the slowest to the fastest rep."""
    modes = list(dict.fromkeys(e["mode"] for e in entries))
    ks = sorted({e["stages"] for e in entries})
    width = 0.8 / len(ks)
    fig, ax = plt.subplots(figsize=(1.6 * len(modes) + 3, 4))
    for j, k in enumerate(ks):
        rows = [next(e for e in entries if e["mode"] == m and e["stages"] == k) for m in modes]
        median = np.array([r["samples_per_sec"]["median"] for r in rows])
        low = median - [r["samples_per_sec"]["min"] for r in rows]
        high = np.array([r["samples_per_sec"]["max"] for r in rows]) - median
        ax.bar(np.arange(len(modes)) + j * width, median, width, yerr=[low, high], capsize=3, label=f"K = {k}")
    ax.set_xticks(np.arange(len(modes)) + width * (len(ks) - 1) / 2, modes)
    ax.set(ylabel="samples / s", title="training throughput")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def plot_timeline(path: Path, events: list[dict], num_stages: int, title: str, first_step: int, num_steps: int) -> None:
    """Gantt chart of what each stage does over a window of time: compute (forward-side and backward-side
    messages, synthetic-input steps), transport (sending), and idle (the gaps)."""
    work = [e for e in events if e["kind"] in WORK_KINDS]
    anchor = [e for e in work if e["stage"] == 0 and e["step"] == first_step]
    closing = [e for e in work if e["stage"] == num_stages - 1 and e["step"] == first_step + num_steps - 1]
    if not anchor or not closing:
        return
    t0, t1 = min(e["start"] for e in anchor), max(e["end"] for e in closing)
    fig, ax = plt.subplots(figsize=(12, 0.7 * num_stages + 1.6))
    busy = [0.0] * num_stages
    for e in work:
        start, end = max(e["start"], t0), min(e["end"], t1)
        if end <= start:
            continue
        busy[e["stage"]] += end - start
        y = num_stages - 1 - e["stage"]
        send_from = max(start, end - e["transport"])
        ax.barh(y, 1000 * (send_from - start), left=1000 * (start - t0), color=COLORS[e["kind"]], height=0.6)
        ax.barh(y, 1000 * (end - send_from), left=1000 * (send_from - t0), color=COLORS["transport"], height=0.6)
        if end - start > 0.04 * (t1 - t0):
            ax.text(1000 * ((start + end) / 2 - t0), y, f"{e['step']}" + (f".{e['micro']}" if e["micro"] else ""),
                    ha="center", va="center", fontsize=7, color="white")
    ax.set_yticks(range(num_stages), [f"stage {s}\n{100 * busy[s] / (t1 - t0):.0f}% busy" for s in reversed(range(num_stages))])
    ax.set(xlabel="ms", xlim=(0, 1000 * (t1 - t0)), title=title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    ax.legend(handles, ["compute (forward message)", "compute (backward message)", "compute (synthetic-input step)",
                        "transport (send)"], loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=4, fontsize=8)
    save_figure(fig, path)


def plot_latency(path: Path, entries: list[dict], latencies: list[float]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for e in entries:
        measured = [x for x in latencies if f"{x:g}" in e["samples_per_sec_by_latency"]]
        rates = [e["samples_per_sec_by_latency"][f"{x:g}"]["median"] for x in measured]
        ax.plot(measured, rates, marker="o", label=f"{e['mode']} K={e['stages']}")
    ax.set(xlabel="injected link latency (ms per message)", ylabel="samples / s", title="throughput against link latency")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_accuracy_vs_time(path: Path, runs: dict, target: float) -> None:
    """Each run's headline figure (accuracy, or bits per token) against training seconds, and the target."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a bench has more rows than the default ten colours
    key, label, scale = headline(next((r.evals for r in runs.values() if r.evals), []))
    for (k, mode), result in runs.items():
        ax.plot([e["train_seconds"] for e in result.evals], [scale * e[key] for e in result.evals],
                marker=".", label=f"{mode} K={k}")
    ax.axhline(scale * target, color="gray", linestyle="--", linewidth=1)
    ax.set(xlabel="training seconds (evaluation excluded)", ylabel=label, title=f"{label.removesuffix(' (%)')} against wall time")
    if key == "test_accuracy":
        ax.set_ylim(bottom=max(0, 100 * target - 15))
    else:
        ax.set_ylim(top=scale * target + 1.5)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_sg_cosine(path: Path, runs: dict) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a bench has more rows than the default ten colours
    for (k, mode), result in runs.items():
        probed = [s for s in result.steps if "sg_cosine" in s]
        for stage in range(k - 1 if probed else 0):
            ax.plot([s["step"] for s in probed], [s["sg_cosine"][stage] for s in probed], marker=".",
                    label=f"{mode} K={k} stage {stage}")
    ax.set(xlabel="step", ylabel="cosine(synthetic, true gradient)", ylim=(-0.1, 1.0), title="synthetic-gradient quality")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_time_to_accuracy(path: Path, entries: list[dict], latencies: list[float], target_text: str) -> None:
    """The headline: seconds of training to the target accuracy against link latency, one line per row
    (a row that never reached the target has no point there)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a bench has more rows than the default ten colours
    for e in entries:
        points = [(x, e["time_to_accuracy_by_latency"].get(f"{x:g}")) for x in latencies]
        points = [(x, s) for x, s in points if s]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{e['mode']} K={e['stages']}")
    ax.set(xlabel="injected link latency (ms per message)", ylabel=f"seconds to {target_text}",
           title="time to accuracy against link latency")
    if ax.lines:  # no row may have reached the target
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
