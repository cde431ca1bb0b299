"""One training run of the pipeline: segments between evaluation and checkpoint steps, metrics.jsonl
written as each segment ends, the checkpoint manifest (`checkpoint.json`), rollbacks after a lost
stage, resume, a clean stop on Ctrl-C, and the summary."""

import logging
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray
from tqdm import tqdm

from .checkpoints import MANIFEST, CheckpointStore, read_manifest, write_manifest
from .config import TrainConfig
from .data import Dataset
from .errors import UserError
from .pipeline import Driver, PipelineError, StageLost
from .runtime import RunFolder
from .stage import LOCKED_MODES

__all__ = ["TrainResult", "bubble_formula", "run_training"]

log = logging.getLogger("dni_pipeline")


@dataclass
class TrainResult:
    summary: dict
    steps: list[dict] = field(default_factory=list)  # one record per training step (metrics.jsonl)
    evals: list[dict] = field(default_factory=list)  # one record per evaluation
    events: list[dict] = field(default_factory=list)  # every timed stage event (the timeline)


def _step_records(cfg: TrainConfig, events: list[dict], steps_per_epoch: int) -> list[dict]:
    """One record per step: the loss and batch accuracy (summed over micro-batches), each earlier
    stage's SG regression loss, and, on probed steps, each earlier stage's SG cosine similarity."""
    records: dict[int, dict] = {}
    per_stage = lambda: [None] * (cfg.stages - 1)  # noqa: E731
    for event in events:
        kind, step = event["kind"], event["step"]
        if kind == "forward" and "loss" in event:
            record = records.setdefault(step, {})
            record["loss"] = record.get("loss", 0.0) + event["loss"]
            record["correct"] = record.get("correct", 0) + event["correct"]
        elif kind == "backward" and "sg_loss" in event:
            records.setdefault(step, {}).setdefault("sg_loss", per_stage())[event["stage"]] = event["sg_loss"]
        elif kind == "probe_backward":
            records.setdefault(step, {}).setdefault("sg_cosine", per_stage())[event["stage"]] = event["sg_cosine"]
    out = []
    for step in sorted(records):
        record = {"kind": "step", "step": step, "epoch": step // steps_per_epoch + 1, **records[step]}
        record["train_accuracy"] = record.pop("correct") / cfg.batch_size
        out.append(record)
    return out


def _utilization(events: list[dict], num_stages: int, train_seconds: float) -> tuple[list[float], list[float]]:
    """Per stage: busy / wall over the training time, and transport (sending: serialisation, object
    store, call submission) as a fraction of compute (busy minus transport)."""
    busy, transport = [0.0] * num_stages, [0.0] * num_stages
    for event in events:
        if event["kind"] in ("forward", "backward"):
            busy[event["stage"]] += event["end"] - event["start"]
            transport[event["stage"]] += event["transport"]
    utilization = [round(b / train_seconds, 4) if train_seconds else 0.0 for b in busy]  # 0 s: a resumed finished run
    return utilization, [round(t / (b - t), 4) if b > t else 0.0 for t, b in zip(transport, busy)]


def bubble_formula(cfg: TrainConfig) -> float:
    """Idle fraction the schedule implies: locked (K-1)/K, GPipe/1F1B (K-1)/(M+K-1), unlocked 0."""
    k, m = cfg.stages, cfg.resolved_micro_batches()
    return (k - 1) / (m + k - 1) if cfg.mode in LOCKED_MODES else 0.0


def _evaluation_points(total_steps: int, every: int) -> list[int]:
    points = list(range(every, total_steps, every))
    return points + [total_steps]


def run_training(cfg: TrainConfig, data: Dataset, run: RunFolder | None = None, resume: bool = False,
                 progress: bool = True) -> TrainResult:
    """Train on the connected Ray cluster, evaluating every `eval_every` steps (default: each epoch)
    and stopping early once `target_accuracy` is reached.

    With a `run` folder the steps and evaluations go to its metrics.jsonl as they finish, the stages are
    checkpointed (at step 0, each evaluation and every `checkpoint_every` steps), a lost stage costs
    only the steps since the last checkpoint, and `resume` continues from the folder's manifest.
    """
    wall_start = time.time()
    previous = read_manifest(run) if resume else None
    store, stage_cfg = None, cfg
    if run:
        if cfg.checkpoint_dir:  # the manifest names it absolutely; the default is found in the run folder, even moved
            cfg = replace(cfg, checkpoint_dir=_absolute(cfg.checkpoint_dir))
        stage_cfg = replace(cfg, checkpoint_dir=cfg.checkpoint_dir or str(run.file("checkpoints").resolve()))
        store = CheckpointStore(stage_cfg.checkpoint_dir)  # a storage that cannot be used is refused before the folder exists
        missing = [f["file"] for f in previous["stages"] if not store.exists(f["file"])] if previous else []
        if missing:
            raise UserError(f"checkpoint {store.path(missing[0])} named by {run.file(MANIFEST)} is missing: "
                            "restore it or start a new run")
        run.create()
    driver = Driver(stage_cfg, data)
    state = {"train_seconds": 0.0, "checkpoint_seconds": 0.0, "wall_seconds": 0.0, "trained_steps": 0,
             "time_to_target": None, "recoveries": [], "resumes": 0}
    steps, evals, checkpoint, stopped_by, session_seconds, wall_offset = [], [], None, None, 0.0, 0.0
    # Ctrl-C ends a run with a folder cleanly (a checkpoint to resume from); without one it stops at once.
    catch_interrupt = run is not None and threading.current_thread() is threading.main_thread()
    interrupt_handler = signal.getsignal(signal.SIGINT)
    eval_points = set(_evaluation_points(driver.total_steps, cfg.eval_every or driver.steps_per_epoch))
    every = cfg.checkpoint_every
    points = sorted(eval_points | set(range(every, driver.total_steps, every) if every else ()))

    def save_checkpoint() -> dict:
        started = time.time()
        saved = driver.save()
        state["wall_seconds"] = wall_offset + time.time() - wall_start
        write_manifest(run, {"format": 1, **saved, "planned_steps": driver.total_steps, **state, "config": cfg.to_dict()})
        kept = {f["file"] for f in saved["stages"]}
        for name in store.names("stage"):
            if name not in kept:
                store.remove(name)
        state["checkpoint_seconds"] += time.time() - started
        return saved

    try:
        if previous:
            state = {key: previous[key] for key in state}
            state["resumes"] += 1
            checkpoint = previous
            driver.restore(previous)
            steps, evals = _logged_records(run, previous["step"])
            log.info("resuming %s at step %d of %d", run.path, driver.next_step, driver.total_steps)
        wall_offset = state["wall_seconds"]
        log.info("%d %s stages on %s; %d steps of batch %d, %d in flight", cfg.stages, cfg.mode,
                 ", ".join(p["node_ip"] + "/" + p["device"] for p in driver.placement), driver.total_steps,
                 cfg.batch_size, cfg.window())
        if catch_interrupt:
            signal.signal(signal.SIGINT, driver.request_stop)
        with tqdm(total=driver.total_steps, initial=driver.next_step, unit="step", desc=f"{cfg.mode} x{cfg.stages}",
                  disable=not progress) as bar:
            try:
                if run and not checkpoint:
                    checkpoint = save_checkpoint()  # step 0: a stage lost before the first evaluation has a place to go back to
            except StageLost as lost:
                raise PipelineError(f"{lost} before the first checkpoint") from None
            while not stopped_by:
                evaluated = {e["step"] for e in evals}
                todo = [p for p in points if p > driver.next_step or (p == driver.next_step and p in eval_points
                                                                      and p not in evaluated)]
                if not todo:
                    break
                try:
                    first = driver.next_step
                    seconds = driver.train_until(todo[0], bar)
                    state["train_seconds"] += seconds
                    state["trained_steps"] += driver.next_step - first
                    session_seconds += seconds
                    records = _step_records(cfg, driver.drain_events(), driver.steps_per_epoch)
                    if driver.stop_requested:
                        stopped_by = "interrupt"
                    elif driver.next_step in eval_points:
                        records.append(_evaluation(driver, state["train_seconds"]))
                        bar.set_postfix(test_acc=f"{records[-1]['test_accuracy']:.4f}")
                        if cfg.target_accuracy and records[-1]["test_accuracy"] >= cfg.target_accuracy:
                            state["time_to_target"], stopped_by = state["train_seconds"], "target accuracy"
                    if run:
                        run.append_jsonl("metrics.jsonl", records)
                        checkpoint = save_checkpoint()
                    steps += [r for r in records if r["kind"] == "step"]
                    evals += [r for r in records if r["kind"] == "eval"]
                except StageLost as lost:
                    if not checkpoint:
                        raise PipelineError(f"{lost}; a run without a run folder has no checkpoint to go back to") from None
                    state["recoveries"].append(driver.recover(lost, checkpoint))
                    steps, evals = _logged_records(run, checkpoint["step"])
                    bar.n = driver.next_step
                    bar.refresh()
        stage_updates = [p["updates"] for p in ray.get([stage.ping.remote() for stage in driver.stages])]
    finally:
        if catch_interrupt:
            signal.signal(signal.SIGINT, interrupt_handler)
        driver.close()
    summary = _summary(cfg, data.name, driver, state, stopped_by, stage_updates, session_seconds, evals,
                       wall_offset + time.time() - wall_start)
    return TrainResult(summary, steps, evals, driver.events)


def _summary(cfg: TrainConfig, dataset: str, driver: Driver, state: dict, stopped_by: str | None,
             stage_updates: list[int], session_seconds: float, evals: list[dict], wall_seconds: float) -> dict:
    """summary.json: the run's outcome, its counters over every resume, and this session's timeline figures."""
    events = driver.events
    utilization, transport = _utilization(events, cfg.stages, session_seconds)
    transits = [e["transit"] for e in events if e["transit"] is not None and e["kind"] in ("forward", "backward")]
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
        "test_accuracy": last.get("test_accuracy"),
        "test_loss": last.get("test_loss"),
        "samples_per_sec": round(state["trained_steps"] * cfg.batch_size / max(state["train_seconds"], 1e-9), 2),
        "stage_utilization": utilization,
        "bubble_measured": round(1 - sum(utilization) / len(utilization), 4),
        "bubble_formula": round(bubble_formula(cfg), 4),
        "transport_fraction": transport,
        "median_transit_ms": round(1000 * float(np.median(transits)), 3) if transits else None,
        "link_latency_ms": cfg.link_latency_ms,
        "target_accuracy": cfg.target_accuracy,
        "time_to_target_seconds": None if state["time_to_target"] is None else round(state["time_to_target"], 3),
        "train_seconds": round(state["train_seconds"], 3),
        "checkpoint_seconds": round(state["checkpoint_seconds"], 3),
        "wall_seconds": round(wall_seconds, 3),
        "placement": driver.placement,
        "config": cfg.to_dict(),
    }


def _evaluation(driver: Driver, train_seconds: float) -> dict:
    record = {"kind": "eval", "step": driver.next_step, "epoch": round(driver.next_step / driver.steps_per_epoch, 3),
              **driver.evaluate(), "train_seconds": round(train_seconds, 3)}
    log.info("%s step %d (epoch %g): test accuracy %.4f", driver.cfg.mode, record["step"], record["epoch"],
             record["test_accuracy"])
    return record


def _logged_records(run: RunFolder, step: int) -> tuple[list[dict], list[dict]]:
    """The run's metrics.jsonl cut back to a checkpoint at `step` (steps before it, evaluations up to it),
    as (step records, evaluation records)."""
    run.trim_jsonl("metrics.jsonl", lambda r: r["step"] < step or (r["kind"] == "eval" and r["step"] == step))
    records = run.read_jsonl("metrics.jsonl")
    return [r for r in records if r["kind"] == "step"], [r for r in records if r["kind"] == "eval"]


def _absolute(location: str) -> str:
    """A local checkpoint path made absolute (actors run in other folders); a URI as given."""
    return location if "://" in location else str(Path(location).resolve())
