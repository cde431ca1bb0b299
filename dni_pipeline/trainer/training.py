"""The training loop of a pipeline run: segments between evaluation and checkpoint steps, a
checkpoint as each segment ends, rollbacks after a lost stage, resume, and a clean stop on Ctrl-C.
What the run reports (its metric records, checkpoint manifest, summary and curves) is made in
report.py and written through the core's RunFolder."""

import logging
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import ray
from tqdm import tqdm

from dni_pipeline.core.errors import JobInterrupted, UserError
from dni_pipeline.core.host import CpuBusy
from dni_pipeline.core.run_folder import RunFolder

from .checkpoints import CheckpointStore
from .config import TrainConfig
from .data import place_data
from .driver import Driver
from .model import Network
from .models import network_from_config
from .recovery import PipelineError, StageLost, recover, restore
from .report import TrainResult, logged_records, save_manifest, step_records, summarize, write_report

__all__ = ["train_pipeline", "train_into_folder"]

log = logging.getLogger("dni_pipeline.trainer")


def _evaluation_points(total_steps: int, every: int) -> list[int]:
    points = list(range(every, total_steps, every))
    return points + [total_steps]


def train_pipeline(cfg: TrainConfig, data, folder: RunFolder | None = None, resume: bool = False,
                   progress: bool = True, network: Network | None = None) -> TrainResult:
    """Train `network` (default: the model `cfg` names) on `data` (a Dataset, arrays, or data already in
    the object store) on the connected Ray cluster, evaluating every `eval_every` steps (default: each
    epoch) and stopping early once `target_accuracy` is reached.

    With a run `folder` the steps and evaluations go to its metrics.jsonl as they finish, the stages are
    checkpointed (at step 0, each evaluation and every `checkpoint_every` steps), a lost stage costs
    only the steps since the last checkpoint, and `resume` continues from the folder's manifest.
    """
    wall_start = time.time()
    data = place_data(data)
    network = network or network_from_config(cfg, data)
    # A model or data that cannot run is refused before any folder or actor exists.
    network.prepare(data, cfg.mode, cfg.synthetic_inputs)
    previous = folder.read_manifest() if resume else None
    store, stage_cfg = None, cfg
    if folder:
        if cfg.checkpoint_dir:  # the manifest names it absolutely; the default is found in the run folder, even moved
            cfg = replace(cfg, checkpoint_dir=_absolute(cfg.checkpoint_dir))
        stage_cfg = replace(cfg, checkpoint_dir=cfg.checkpoint_dir or str(folder.file("checkpoints").resolve()))
        store = CheckpointStore(stage_cfg.checkpoint_dir)  # a storage that cannot be used is refused before the folder exists
        missing = [f["file"] for f in previous["stages"] if not store.exists(f["file"])] if previous else []
        if missing:
            raise UserError(f"checkpoint {store.path(missing[0])} named by {folder.file(RunFolder.MANIFEST)} is missing: "
                            "restore it or start a new run")
        folder.create()
    driver = Driver(stage_cfg, data, network)
    state = {"train_seconds": 0.0, "checkpoint_seconds": 0.0, "wall_seconds": 0.0, "trained_steps": 0,
             "time_to_target": None, "recoveries": [], "resumes": 0}
    steps, evals, checkpoint, stopped_by, session_seconds, wall_offset = [], [], None, None, 0.0, 0.0
    host = CpuBusy()  # this node's cores while training (not evaluating or checkpointing), every process's work
    # Ctrl-C ends a run with a folder cleanly (a checkpoint to resume from); without one it stops at once.
    catch_interrupt = folder is not None and threading.current_thread() is threading.main_thread()
    interrupt_handler = signal.getsignal(signal.SIGINT)
    eval_points = set(_evaluation_points(driver.total_steps, cfg.eval_every or driver.steps_per_epoch))
    every = cfg.checkpoint_every
    points = sorted(eval_points | set(range(every, driver.total_steps, every) if every else ()))

    def save_checkpoint() -> dict:
        started = time.time()
        saved = driver.save()
        state["wall_seconds"] = wall_offset + time.time() - wall_start
        save_manifest(folder, saved, driver.total_steps, state, cfg)
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
            restore(driver, previous)
            steps, evals = logged_records(folder, previous["step"])
            log.info("resuming %s at step %d of %d", folder.path, driver.next_step, driver.total_steps)
        wall_offset = state["wall_seconds"]
        log.info("%d %s stages on %s; %d steps of batch %d, %d in flight", cfg.stages, cfg.mode,
                 ", ".join(p["node_ip"] + "/" + p["device"] for p in driver.placement), driver.total_steps,
                 cfg.batch_size, cfg.window())
        if catch_interrupt:
            signal.signal(signal.SIGINT, driver.request_stop)
        with tqdm(total=driver.total_steps, initial=driver.next_step, unit="step", desc=f"{cfg.mode} x{cfg.stages}",
                  disable=not progress) as bar:
            try:
                if folder and not checkpoint:
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
                    with host:
                        seconds = driver.train_until(todo[0], bar)
                    state["train_seconds"] += seconds
                    state["trained_steps"] += driver.next_step - first
                    session_seconds += seconds
                    records = step_records(cfg, driver.drain_events(), driver.steps_per_epoch)
                    if driver.stop_requested:
                        stopped_by = "interrupt"
                    elif driver.next_step in eval_points:
                        records.append(_evaluation(driver, state["train_seconds"]))
                        bar.set_postfix({k.removeprefix("test_"): f"{v:.4f}" for k, v in records[-1].items()
                                         if k in ("test_accuracy", "test_bits")})
                        if cfg.target_reached(records[-1]):
                            state["time_to_target"], stopped_by = state["train_seconds"], "target accuracy"
                    if folder:
                        folder.append_metrics(records)
                        checkpoint = save_checkpoint()
                    steps += [r for r in records if r["kind"] == "step"]
                    evals += [r for r in records if r["kind"] == "eval"]
                except StageLost as lost:
                    if not checkpoint:
                        raise PipelineError(f"{lost}; a run without a run folder has no checkpoint to go back to") from None
                    state["recoveries"].append(recover(driver, lost, checkpoint))
                    steps, evals = logged_records(folder, checkpoint["step"])
                    bar.n = driver.next_step
                    bar.refresh()
        stage_updates = [p["updates"] for p in ray.get([stage.ping.remote() for stage in driver.stages])]
        weights = driver.weights()
    finally:
        if catch_interrupt:
            signal.signal(signal.SIGINT, interrupt_handler)
        driver.close()
    summary = summarize(cfg, driver.data.name, driver, state, stopped_by, stage_updates, session_seconds, evals,
                       wall_offset + time.time() - wall_start, host.share)
    return TrainResult(summary, steps, evals, driver.events, weights)


def _evaluation(driver: Driver, train_seconds: float) -> dict:
    record = {"kind": "eval", "step": driver.next_step, "epoch": round(driver.next_step / driver.steps_per_epoch, 3),
              **driver.evaluate(), "train_seconds": round(train_seconds, 3)}
    log.info("%s step %d (epoch %g): %s", driver.cfg.mode, record["step"], record["epoch"], ", ".join(
        f"{k} {v:.4f}" for k, v in record.items() if k.startswith("test_")))
    return record


def _absolute(location: str) -> str:
    """A local checkpoint path made absolute (actors run in other folders); a URI as given."""
    return location if "://" in location else str(Path(location).resolve())


def train_into_folder(cfg: TrainConfig, data, folder: RunFolder, progress: bool, resume: bool = False,
                      network: Network | None = None) -> TrainResult:
    """One run into its folder: metrics and checkpoints while it trains, the report when it ends."""
    result = train_pipeline(cfg, data, folder, resume=resume, progress=progress, network=network)
    write_report(folder, cfg, result.summary["dataset"], result)
    if result.summary["stopped_by"] == "interrupt":
        raise JobInterrupted(f"stopped at step {result.summary['steps']} of {result.summary['planned_steps']} with a "
                             f"checkpoint: continue with `dni-pipeline train --resume {folder.path}`")
    return result
