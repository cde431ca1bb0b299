"""The driver: starts the stage actors, feeds stage 0 with bounded steps in flight, evaluates each
epoch, and turns the stages' events into metrics. It never carries activations or gradients."""

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import ray
from tqdm import tqdm

from .actors import Ledger, StageActor
from .config import TrainConfig
from .data import Dataset, batch_order
from .errors import UserError

__all__ = ["PipelineError", "TrainResult", "check_capacity", "run_training"]

log = logging.getLogger("dni_pipeline")

STALL_SECONDS = 300.0  # no progress at all for this long means a stage is stuck


class PipelineError(RuntimeError):
    """A stage failed or stopped making progress; the message names the stage."""


@dataclass
class TrainResult:
    summary: dict
    steps: list[dict] = field(default_factory=list)  # one record per training step (metrics.jsonl)
    epochs: list[dict] = field(default_factory=list)  # one record per evaluation
    events: list[dict] = field(default_factory=list)  # every timed stage event (the timeline)


def check_capacity(cfg: TrainConfig) -> None:
    """Refuse, before any actor starts, a cluster that cannot host one actor per stage."""
    resources = ray.cluster_resources()
    kind, per_stage = ("GPU", 1.0) if cfg.device == "cuda" else ("CPU", cfg.cpus_per_stage)
    have, need = resources.get(kind, 0.0), per_stage * cfg.stages
    if have < need:
        raise UserError(
            f"the Ray cluster has {have:g} {kind}s but {cfg.stages} stages need {need:g}: "
            f"add nodes, use fewer --stages, or lower --cpus-per-stage"
        )


class _Driver:
    def __init__(self, cfg: TrainConfig, data: Dataset):
        self.cfg, self.data = cfg, data
        self.steps_per_epoch = len(data.x_train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"--batch-size {cfg.batch_size} exceeds the {len(data.x_train)} training samples: lower it")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.ledger = Ledger.remote(cfg.stages)
        data_refs = [ray.put(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)]
        resources = {"num_gpus": 1} if cfg.device == "cuda" else {"num_cpus": cfg.cpus_per_stage}
        actor_class = ray.remote(StageActor)
        self.stages = [
            actor_class.options(name=None, **resources).remote(
                cfg.to_dict(), i, data.input_shape, data.num_classes, self.total_steps, self.ledger,
                *(data_refs if i == 0 else [None] * 4),
            )
            for i in range(cfg.stages)
        ]
        ray.get([
            stage.connect.remote(self.stages[i - 1] if i else None, self.stages[i + 1] if i + 1 < cfg.stages else None)
            for i, stage in enumerate(self.stages)
        ])
        self.placement = ray.get([stage.placement.remote() for stage in self.stages])
        self.events: list[dict] = []
        self.evaluated_batches = 0
        self.last_counts: dict | None = None

    def close(self) -> None:
        for actor in self.stages + [self.ledger]:
            ray.kill(actor)

    def wait(self, targets: list[tuple[str, int, int]]) -> dict:
        """Block until the ledger reports the targets; raise if a stage failed or nothing moves."""
        while True:
            status = ray.get(self.ledger.wait.remote(targets, STALL_SECONDS))
            if status["error"]:
                raise PipelineError(status["error"])
            if status["done"]:
                return status["counts"]
            if status["counts"] == self.last_counts:
                raise PipelineError(f"no stage made progress for {STALL_SECONDS:.0f} s (counts {status['counts']})")
            self.last_counts = status["counts"]

    def train_epoch(self, epoch: int, progress: tqdm) -> float:
        """Feed one epoch with at most `window` steps in flight; return its training seconds."""
        cfg, window = self.cfg, self.cfg.window()
        done_stage = 0 if cfg.mode == "backprop" else cfg.stages - 1  # the stage that finishes a step last
        first = epoch * self.steps_per_epoch
        finished = first
        start = time.time()
        for i, indices in enumerate(batch_order(len(self.data.x_train), cfg.batch_size, epoch, cfg.seed)):
            step = first + i
            if step - finished >= window:
                finished = self.wait([("update", done_stage, step - window + 1)])["update"][done_stage]
                progress.update(finished - progress.n)
            self.stages[0].feed.remote(step, indices)
        # Drain: every stage has applied every update, and every SG target has been used.
        end_step = first + self.steps_per_epoch
        targets = [("update", s, end_step) for s in range(cfg.stages)]
        if cfg.mode != "backprop":
            targets += [("backward", s, end_step) for s in range(cfg.stages - 1)]
        self.wait(targets)
        progress.update(end_step - progress.n)
        return time.time() - start

    def evaluate(self) -> dict:
        """Test loss and accuracy with the stages' current weights, through the same actors."""
        count = len(self.data.x_test)
        batches = np.array_split(np.arange(count), max(1, -(-count // self.cfg.batch_size)))
        first = self.evaluated_batches
        for i, indices in enumerate(batches):
            self.stages[0].feed_eval.remote(first + i, indices)
        self.evaluated_batches += len(batches)
        self.wait([("eval", self.cfg.stages - 1, self.evaluated_batches)])
        self.events += ray.get(self.ledger.drain.remote())
        scored = [e for e in self.events if e["kind"] == "eval" and e["step"] >= first and "correct" in e]
        return {
            "test_accuracy": sum(e["correct"] for e in scored) / count,
            "test_loss": sum(e["loss_sum"] for e in scored) / count,
        }


def _step_records(cfg: TrainConfig, events: list[dict], steps_per_epoch: int) -> list[dict]:
    """One record per step: the last stage's loss and batch accuracy, each earlier stage's SG loss."""
    records: dict[int, dict] = {}
    for event in events:
        if event["kind"] == "forward" and "loss" in event:
            records.setdefault(event["step"], {}).update(
                loss=event["loss"], train_accuracy=event["correct"] / event["count"])
        elif event["kind"] == "backward" and "sg_loss" in event:
            records.setdefault(event["step"], {}).setdefault("sg_loss", [None] * (cfg.stages - 1))
            records[event["step"]]["sg_loss"][event["stage"]] = event["sg_loss"]
    return [{"step": s, "epoch": s // steps_per_epoch + 1, **records[s]} for s in sorted(records)]


def _utilization(events: list[dict], num_stages: int, train_seconds: float) -> tuple[list[float], list[float]]:
    """Per stage: busy / wall over the training time, and transport / busy."""
    busy, transport = [0.0] * num_stages, [0.0] * num_stages
    for event in events:
        if event["kind"] != "eval":
            busy[event["stage"]] += event["end"] - event["start"]
            transport[event["stage"]] += event["transport"]
    utilization = [round(b / train_seconds, 4) for b in busy]
    return utilization, [round(t / b, 4) if b else 0.0 for t, b in zip(transport, busy)]


def run_training(cfg: TrainConfig, data: Dataset, on_epoch=None, progress: bool = True) -> TrainResult:
    """Train `cfg.epochs` epochs on the connected Ray cluster.

    `on_epoch(epoch_record, step_records)` sees each epoch as soon as it is evaluated, so its metrics
    can be written while the run goes on.
    """
    wall_start = time.time()
    driver = _Driver(cfg, data)
    log.info("%d %s stages on %s; %d steps of batch %d, %d in flight",
             cfg.stages, cfg.mode, ", ".join(p["node_ip"] + "/" + p["device"] for p in driver.placement),
             driver.total_steps, cfg.batch_size, cfg.window())
    epochs, steps, train_seconds = [], [], 0.0
    try:
        with tqdm(total=driver.total_steps, unit="step", desc=f"{cfg.mode} x{cfg.stages}", disable=not progress) as bar:
            for epoch in range(cfg.epochs):
                train_seconds += driver.train_epoch(epoch, bar)
                seen = len(driver.events)
                record = {"epoch": epoch + 1, **driver.evaluate(), "train_seconds": round(train_seconds, 3)}
                epoch_steps = _step_records(cfg, driver.events[seen:], driver.steps_per_epoch)
                bar.set_postfix(test_acc=f"{record['test_accuracy']:.4f}")
                epochs.append(record)
                steps += epoch_steps
                if on_epoch:
                    on_epoch(record, epoch_steps)
    finally:
        driver.close()
    events = driver.events
    utilization, transport = _utilization(events, cfg.stages, train_seconds)
    summary = {
        "mode": cfg.mode,
        "stages": cfg.stages,
        "epochs": cfg.epochs,
        "dataset": data.name,
        "arch": cfg.arch,
        "batch_size": cfg.batch_size,
        "steps": driver.total_steps,
        "test_accuracy": epochs[-1]["test_accuracy"],
        "test_loss": epochs[-1]["test_loss"],
        "samples_per_sec": round(driver.total_steps * cfg.batch_size / train_seconds, 2),
        "stage_utilization": utilization,
        "transport_fraction": transport,
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.time() - wall_start, 3),
        "placement": driver.placement,
        "config": cfg.to_dict(),
    }
    return TrainResult(summary, steps, epochs, events)
