"""The driver: starts the stage actors, feeds stage 0 with bounded steps in flight, evaluates at set
steps, and turns the stages' events into metrics. It never carries activations or gradients."""

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import ray
from tqdm import tqdm

from .actors import Ledger, StageActor
from .cluster import STAGE_SLOT
from .config import TrainConfig
from .data import Dataset, batch_order
from .errors import UserError
from .runtime import require_resources
from .stage import LOCKED_MODES, SG_MODES

__all__ = ["PipelineError", "TrainResult", "bubble_formula", "check_capacity", "run_training"]

log = logging.getLogger("dni_pipeline")

STALL_SECONDS = 300.0  # no progress at all for this long means a stage is stuck


class PipelineError(RuntimeError):
    """A stage failed or stopped making progress; the message names the stage."""


@dataclass
class TrainResult:
    summary: dict
    steps: list[dict] = field(default_factory=list)  # one record per training step (metrics.jsonl)
    evals: list[dict] = field(default_factory=list)  # one record per evaluation
    events: list[dict] = field(default_factory=list)  # every timed stage event (the timeline)


def check_capacity(cfg: TrainConfig) -> None:
    """Refuse, before any actor starts, a cluster that cannot host one actor per stage (and, on a
    cluster that names its stage slots, one slot per stage)."""
    kind, per_stage = ("GPU", 1.0) if cfg.device == "cuda" else ("CPU", cfg.cpus_per_stage)
    require_resources({kind: per_stage * cfg.stages}, f"{cfg.stages} stages need them; add nodes, use fewer "
                      "--stages, or lower --cpus-per-stage")
    if ray.cluster_resources().get(STAGE_SLOT):
        require_resources({STAGE_SLOT: cfg.stages}, f"each of the {cfg.stages} stages takes one; add worker nodes "
                          "(each brings its stage slots) or use fewer --stages")


def stage_resources(cfg: TrainConfig) -> dict:
    """Ray options of one stage actor: its CPUs or GPU, a stage slot where the cluster names them, and
    spread over nodes so consecutive stages run on different machines when there are several."""
    options = {"num_gpus": 1} if cfg.device == "cuda" else {"num_cpus": cfg.cpus_per_stage}
    if ray.cluster_resources().get(STAGE_SLOT):
        options["resources"] = {STAGE_SLOT: 1}
    return {**options, "scheduling_strategy": "SPREAD"}


class _Driver:
    def __init__(self, cfg: TrainConfig, data: Dataset):
        self.cfg, self.data = cfg, data
        self.steps_per_epoch = len(data.x_train) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"--batch-size {cfg.batch_size} exceeds the {len(data.x_train)} training samples: lower it")
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        self.ledger = Ledger.remote(cfg.stages)
        data_refs = [ray.put(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)]
        actor_class = ray.remote(StageActor)
        self.stages = [
            actor_class.options(**stage_resources(cfg)).remote(
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
        self.evaluated_batches = self.probes = self.next_step = 0
        self.order_epoch, self.order = -1, []
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

    def batch(self, step: int) -> np.ndarray:
        """Indices of a global step's mini-batch (each epoch a fresh seeded shuffle)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self.order_epoch != epoch:
            self.order = batch_order(len(self.data.x_train), self.cfg.batch_size, epoch, self.cfg.seed)
            self.order_epoch = epoch
        return self.order[i]

    def train_until(self, end_step: int, progress: tqdm) -> float:
        """Feed steps up to `end_step` with at most `window` in flight, then drain; return the seconds."""
        cfg, window = self.cfg, self.cfg.window()
        # The stage that finishes a step last: stage 0 after a locked flush, else the last stage.
        done_stage = 0 if cfg.mode in LOCKED_MODES else cfg.stages - 1
        probing = cfg.mode in SG_MODES and cfg.sg_probe_every and cfg.stages > 1
        finished, start = self.next_step, time.time()
        for step in range(self.next_step, end_step):
            if step - finished >= window:
                finished = self.wait([("update", done_stage, step - window + 1)])["update"][done_stage]
                progress.update(finished - progress.n)
            indices = self.batch(step)
            for micro, part in enumerate(np.array_split(indices, cfg.resolved_micro_batches())):
                self.stages[0].feed.remote(step, micro, part)
            if probing and step % cfg.sg_probe_every == 0:
                self.stages[0].feed_probe.remote(step, indices)
                self.probes += 1
        # Drain: every stage has applied every update, every SG target and probe has been used.
        targets = [("update", s, end_step) for s in range(cfg.stages)]
        if cfg.mode in SG_MODES and not cfg.sg_off:
            targets += [("backward", s, end_step) for s in range(cfg.stages - 1)]
        if self.probes:
            targets.append(("probe_backward", 0, self.probes))
        self.wait(targets)
        progress.update(end_step - progress.n)
        self.next_step = end_step
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
        record = {"step": step, "epoch": step // steps_per_epoch + 1, **records[step]}
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
    utilization = [round(b / train_seconds, 4) for b in busy]
    return utilization, [round(t / (b - t), 4) if b > t else 0.0 for t, b in zip(transport, busy)]


def bubble_formula(cfg: TrainConfig) -> float:
    """Idle fraction the schedule implies: locked (K-1)/K, GPipe/1F1B (K-1)/(M+K-1), unlocked 0."""
    k, m = cfg.stages, cfg.resolved_micro_batches()
    return (k - 1) / (m + k - 1) if cfg.mode in LOCKED_MODES else 0.0


def _evaluation_points(total_steps: int, every: int) -> list[int]:
    points = list(range(every, total_steps, every))
    return points + [total_steps]


def run_training(cfg: TrainConfig, data: Dataset, on_eval=None, progress: bool = True) -> TrainResult:
    """Train on the connected Ray cluster, evaluating every `eval_every` steps (default: each epoch)
    and stopping early once `target_accuracy` is reached.

    `on_eval(eval_record, step_records)` sees each evaluation with the steps trained since the last,
    so metrics can be written while the run goes on.
    """
    wall_start = time.time()
    driver = _Driver(cfg, data)
    log.info("%d %s stages on %s; %d steps of batch %d, %d in flight",
             cfg.stages, cfg.mode, ", ".join(p["node_ip"] + "/" + p["device"] for p in driver.placement),
             driver.total_steps, cfg.batch_size, cfg.window())
    evals, steps, train_seconds, time_to_target = [], [], 0.0, None
    try:
        with tqdm(total=driver.total_steps, unit="step", desc=f"{cfg.mode} x{cfg.stages}", disable=not progress) as bar:
            for end_step in _evaluation_points(driver.total_steps, cfg.eval_every or driver.steps_per_epoch):
                train_seconds += driver.train_until(end_step, bar)
                seen = len(driver.events)
                record = {"step": end_step, "epoch": round(end_step / driver.steps_per_epoch, 3),
                          **driver.evaluate(), "train_seconds": round(train_seconds, 3)}
                new_steps = _step_records(cfg, driver.events[seen:], driver.steps_per_epoch)
                bar.set_postfix(test_acc=f"{record['test_accuracy']:.4f}")
                evals.append(record)
                steps += new_steps
                if on_eval:
                    on_eval(record, new_steps)
                if cfg.target_accuracy and record["test_accuracy"] >= cfg.target_accuracy:
                    time_to_target = train_seconds
                    break
    finally:
        driver.close()
    events = driver.events
    utilization, transport = _utilization(events, cfg.stages, train_seconds)
    transits = [e["transit"] for e in events if e["transit"] is not None and e["kind"] in ("forward", "backward")]
    summary = {
        "mode": cfg.mode,
        "stages": cfg.stages,
        "micro_batches": cfg.resolved_micro_batches(),
        "epochs": cfg.epochs,
        "dataset": data.name,
        "arch": cfg.arch,
        "batch_size": cfg.batch_size,
        "steps": driver.next_step,
        "test_accuracy": evals[-1]["test_accuracy"],
        "test_loss": evals[-1]["test_loss"],
        "samples_per_sec": round(driver.next_step * cfg.batch_size / train_seconds, 2),
        "stage_utilization": utilization,
        "bubble_measured": round(1 - sum(utilization) / len(utilization), 4),
        "bubble_formula": round(bubble_formula(cfg), 4),
        "transport_fraction": transport,
        "median_transit_ms": round(1000 * float(np.median(transits)), 3) if transits else None,
        "link_latency_ms": cfg.link_latency_ms,
        "target_accuracy": cfg.target_accuracy,
        "time_to_target_seconds": None if time_to_target is None else round(time_to_target, 3),
        "train_seconds": round(train_seconds, 3),
        "wall_seconds": round(time.time() - wall_start, 3),
        "placement": driver.placement,
        "config": cfg.to_dict(),
    }
    return TrainResult(summary, steps, evals, events)
