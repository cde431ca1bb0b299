"""What a pipeline run reports into its run folder: the step and evaluation records of
`metrics.jsonl` (cut back to a checkpoint on a rollback), the checkpoint manifest, `summary.json`
with its timeline figures, `curves.png`, and the summary table printed at the end."""

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from dni_pipeline.core.files import atomic_path
from dni_pipeline.core.run_folder import RunFolder

from .config import TrainConfig
from .plots import plot_training_curves
from .stage import LOCKED_MODES, WORK_KINDS

__all__ = ["TrainResult", "bubble_formula", "logged_records", "save_manifest", "step_records", "summarize",
           "summary_table", "tokens_per_sec", "write_report"]

SUMMARY_COLUMNS = [
    ("mode", "mode"), ("stages", "K"), ("epochs", "epochs"), ("test_accuracy", "test acc"),
    ("samples_per_sec", "samples/s"), ("stage_utilization", "utilization per stage"),
    ("train_seconds", "train s"), ("wall_seconds", "wall s"),
]


SG_STEP_KEYS = {"forward": ("sg_scale",), "synthetic": ("sg_scale",),
                "backward": ("sg_loss", "sg_r2", "sg_step_cosine", "sg_true_step_cosine")}
INPUT_STEP_KEYS = ("input_loss", "input_r2")  # synthetic inputs: each later stage's input-model fit


@dataclass
class TrainResult:
    summary: dict
    steps: list[dict] = field(default_factory=list)  # one record per training step (metrics.jsonl)
    evals: list[dict] = field(default_factory=list)  # one record per evaluation
    events: list[dict] = field(default_factory=list)  # every timed stage event (the timeline)
    weights: dict | None = None  # the trained model's state dict (loads into the whole model)

    def state_dict(self) -> dict:
        """The trained weights, keyed as the whole model's (the cut nn.Sequential, or Sequential(*stages))."""
        return self.weights


def step_records(cfg: TrainConfig, events: list[dict], steps_per_epoch: int) -> list[dict]:
    """One record per step: the loss and batch accuracy (summed over micro-batches); for each earlier
    stage its SG regression loss, the R^2 of the prediction it used against the target, and the scale
    its update rule applied; on measured steps (gated) the weight-space cosines to the true gradient of its SG
    step and of Adam's step on the measured true gradients alone, on probed steps each earlier stage's SG cosine
    similarity, and under synthetic inputs each stage's input-model loss and R^2 on the real input (lists over
    all stages, None for stage 0)."""
    records: dict[int, dict] = {}
    per_stage = lambda: [None] * (cfg.stages - 1)  # noqa: E731
    for event in events:
        kind, step = event["kind"], event["step"]
        for key in INPUT_STEP_KEYS if kind == "forward" else ():
            if key in event:
                records.setdefault(step, {}).setdefault(key, [None] * cfg.stages)[event["stage"]] = event[key]
        if kind == "forward" and "loss" in event:
            record = records.setdefault(step, {})
            record["loss"] = record.get("loss", 0.0) + event["loss"]
            record["correct"] = record.get("correct", 0) + event["correct"]
        elif kind in SG_STEP_KEYS:
            for key in SG_STEP_KEYS[kind]:
                if key in event:
                    records.setdefault(step, {}).setdefault(key, per_stage())[event["stage"]] = event[key]
        elif kind == "probe_backward":
            records.setdefault(step, {}).setdefault("sg_cosine", per_stage())[event["stage"]] = event["sg_cosine"]
    out = []
    for step in sorted(records):
        record = {"kind": "step", "step": step, "epoch": step // steps_per_epoch + 1, **records[step]}
        if "correct" in record:
            record["train_accuracy"] = record.pop("correct") / cfg.batch_size
        out.append(record)
    return out


def _utilization(events: list[dict], num_stages: int, train_seconds: float) -> tuple[list[float], list[float]]:
    """Per stage: busy / wall over the training time, and transport (sending: serialisation, object
    store, call submission) as a fraction of compute (busy minus transport)."""
    busy, transport = [0.0] * num_stages, [0.0] * num_stages
    for event in events:
        if event["kind"] in WORK_KINDS:
            busy[event["stage"]] += event["end"] - event["start"]
            transport[event["stage"]] += event["transport"]
    utilization = [round(b / train_seconds, 4) if train_seconds else 0.0 for b in busy]  # 0 s: a resumed finished run
    return utilization, [round(t / (b - t), 4) if b > t else 0.0 for t, b in zip(transport, busy)]


def _update_rates(events: list[dict], num_stages: int) -> list[float | None]:
    """Per stage: its optimizer updates per second over its own span of them (first start to last end). Under
    synthetic inputs a stage not slowed keeps its rate however slow another is."""
    rates = []
    for stage in range(num_stages):
        updates = [e for e in events if e["stage"] == stage and e["updates"]]
        span = max(e["end"] for e in updates) - min(e["start"] for e in updates) if updates else 0.0
        rates.append(round(sum(e["updates"] for e in updates) / span, 2) if span > 0 else None)
    return rates


def _peak_stored(events: list[dict], num_stages: int) -> list[int | None] | None:
    """Per stage: the most bytes its batches in flight held at once (reported by delayed stages), else None."""
    peaks = [None] * num_stages
    for event in events:
        if "peak_stored_bytes" in event:
            peaks[event["stage"]] = max(peaks[event["stage"]] or 0, event["peak_stored_bytes"])
    return peaks if any(p is not None for p in peaks) else None


def bubble_formula(cfg: TrainConfig) -> float:
    """Idle fraction the schedule implies: locked (K-1)/K, GPipe/1F1B (K-1)/(M+K-1), unlocked 0."""
    k, m = cfg.stages, cfg.resolved_micro_batches()
    return (k - 1) / (m + k - 1) if cfg.mode in LOCKED_MODES else 0.0


def tokens_per_sec(data, samples: int, seconds: float) -> float | None:
    """A sequence model's throughput in tokens (label positions); None for a classifier."""
    per_sample = data.tokens_per_sample
    return round(samples * per_sample / max(seconds, 1e-9), 1) if per_sample > 1 else None


def summarize(cfg: TrainConfig, dataset: str, driver, state: dict, stopped_by: str | None,
              stage_updates: list[int], session_seconds: float, evals: list[dict], wall_seconds: float,
              host_cpu_busy: float | None) -> dict:
    """summary.json: the run's outcome, its counters over every resume, and this session's timeline figures."""
    events = driver.events
    utilization, transport = _utilization(events, cfg.stages, session_seconds)
    transits = [e["transit"] for e in events if e["transit"] is not None and e["kind"] in WORK_KINDS]
    last = evals[-1] if evals else {}
    return {
        "mode": cfg.mode,
        "stages": cfg.stages,
        "micro_batches": cfg.resolved_micro_batches(),
        "epochs": cfg.epochs,
        "dataset": dataset,
        "arch": cfg.arch,
        "batch_size": cfg.batch_size,
        "steps": stage_updates[-1],
        "planned_steps": driver.total_steps,
        "stage_updates": stage_updates,
        "stopped_by": stopped_by or "completed",
        "resumed": state["resumes"] > 0,
        "resumes": state["resumes"],
        "recoveries": state["recoveries"],
        "test_accuracy": last.get("test_accuracy"),  # None for a model with its own loss
        "test_loss": last.get("test_loss"),
        **{k: v for k, v in last.items() if k.startswith("test_")},  # bits per token, the user's metrics
        "samples_per_sec": round(state["trained_steps"] * cfg.batch_size / max(state["train_seconds"], 1e-9), 2),
        "tokens_per_sec": tokens_per_sec(driver.data, state["trained_steps"] * cfg.batch_size, state["train_seconds"]),
        "stage_utilization": utilization,
        "stage_update_rate": _update_rates(events, cfg.stages),  # this session's updates per second, stage by stage
        "peak_stored_bytes": _peak_stored(events, cfg.stages),  # delayed mode: what batches in flight held, at most
        "bubble_measured": round(1 - sum(utilization) / len(utilization), 4),
        "bubble_formula": round(bubble_formula(cfg), 4),
        "transport_fraction": transport,
        "median_transit_ms": round(1000 * float(np.median(transits)), 3) if transits else None,
        "host_cpu_busy": host_cpu_busy,  # the driver's node, this session's training: near 1.0, the host paced the run
        "link_latency_ms": cfg.link_latency_ms,
        "target_accuracy": cfg.target_accuracy,
        "target_bits": cfg.target_bits,
        "time_to_target_seconds": None if state["time_to_target"] is None else round(state["time_to_target"], 3),
        "train_seconds": round(state["train_seconds"], 3),
        "checkpoint_seconds": round(state["checkpoint_seconds"], 3),
        "wall_seconds": round(wall_seconds, 3),
        "placement": driver.placement,
        "config": {**dataclasses.asdict(cfg), "sg_update": cfg.resolved_sg_update()},
    }


# -- the run folder ----------------------------------------------------------------------------------
def logged_records(folder: RunFolder, step: int) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl cut back to a checkpoint at `step` (steps before it, evaluations up to it), as
    (step records, evaluation records)."""
    records = folder.trim_metrics(lambda r: r["step"] < step or (r["kind"] == "eval" and r["step"] == step))
    return [r for r in records if r["kind"] == "step"], [r for r in records if r["kind"] == "eval"]


def save_manifest(folder: RunFolder, saved: dict, planned_steps: int, state: dict, cfg: TrainConfig) -> None:
    """The manifest of the stage files just saved, with the run's counters and config: what a resume needs."""
    folder.write_manifest({**saved, "planned_steps": planned_steps, **state, "config": dataclasses.asdict(cfg)})


def write_report(folder: RunFolder, cfg: TrainConfig, dataset: str, result: TrainResult) -> None:
    """summary.json, the trained weights as model.pt (a state dict of the whole model) and curves.png."""
    folder.write_summary(result.summary)
    with atomic_path(folder.file("model.pt")) as path:
        torch.save(result.weights, path)
    plot_training_curves(folder.file("curves.png"), result.steps, result.evals,
                         f"{cfg.mode}, {cfg.stages} stages, {dataset} ({cfg.arch})")


def summary_table(rows: list[dict]) -> str:
    """Run summaries as an aligned text table of their main figures (bits per token for sequence models)."""
    columns = list(SUMMARY_COLUMNS)
    if any(row.get("test_bits") is not None for row in rows):
        columns.insert(4, ("test_bits", "test bits"))
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
