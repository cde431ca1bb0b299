"""The driver: starts the stage actors, feeds stage 0 with bounded steps in flight, evaluates at set
steps, checkpoints the stages, and turns the stages' events into metrics. It never carries activations
or gradients.

Faults: with a run folder, every stage saves its state at each checkpoint step (the pipeline drained,
so the set is consistent) and the driver then writes the manifest. A stage actor that dies (or answers
no ping for `stall_timeout`) is restarted by Ray; the driver then moves every stage back to the last
manifest in a new *generation*: messages of the old one are dropped, so the steps since the checkpoint
are sent again and no step reaches a stage's weights twice (each stage also checks this itself).
"""

import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from .actors import Ledger, StageActor
from .checkpoints import CheckpointStore, read_manifest, write_manifest
from .cluster import STAGE_SLOT
from .config import TrainConfig
from .data import Dataset, batch_order
from .errors import UserError
from .runtime import RunFolder, require_resources
from .stage import LOCKED_MODES, SG_MODES

__all__ = ["PipelineError", "TrainResult", "bubble_formula", "check_capacity", "run_training"]

log = logging.getLogger("dni_pipeline")

POLL_SECONDS = 1.0  # how often the driver looks at the stages while it waits
RESTART_SECONDS = 180.0  # how long a lost stage may take to come back (a lost node is noticed in ~30 s)


class PipelineError(RuntimeError):
    """A stage failed or stopped making progress; the message names the stage."""


class StageLost(Exception):
    """A stage actor died or stopped answering: the run goes back to its last checkpoint."""

    def __init__(self, stage: int, reason: str):
        super().__init__(f"stage {stage} lost: {reason}")
        self.stage, self.reason = stage, reason


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
        # The ledger lives on the driver's node: losing another node must not lose the run's bookkeeping.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.ledger = Ledger.options(scheduling_strategy=here).remote(cfg.stages)
        self.data_refs = [ray.put(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)]
        actor_class = ray.remote(StageActor)
        run_id = uuid.uuid4().hex[:8]
        self.stages = [  # named, so `ray list actors` (and a test) can find stage i of a run
            actor_class.options(**stage_resources(cfg), name=f"dni-{run_id}-stage{i}", max_restarts=cfg.max_restarts,
                                max_task_retries=0).remote(
                cfg.to_dict(), i, data.input_shape, data.num_classes, self.total_steps)
            for i in range(cfg.stages)
        ]
        self.generation = 0
        self._connect()
        self.placement = ray.get([stage.placement.remote() for stage in self.stages])
        self._ping_all()
        self.restarts = [0] * cfg.stages
        self.events: list[dict] = []
        self.checkpoint_events = 0  # events before the last checkpoint: those after it are redone on a rollback
        self.next_step = self.evaluated_batches = self.probes = 0
        self.order_epoch, self.order = -1, []
        self.last_counts: dict | None = None
        self.stop_requested = False

    def close(self) -> None:
        for actor in self.stages + [self.ledger]:
            ray.kill(actor)

    def _connect(self) -> None:
        """Neighbours and data: what a stage actor is given after its constructor, so also after a restart."""
        ray.get([self.stages[0].attach_data.remote(*self.data_refs)] + [
            stage.connect.remote(self.stages[i - 1] if i else None, self.stages[i + 1] if i + 1 < self.cfg.stages else None,
                                 self.ledger)
            for i, stage in enumerate(self.stages)
        ])

    def _ping_all(self) -> None:
        self.pings = [stage.ping.remote() for stage in self.stages]
        self.ping_sent = [time.monotonic()] * len(self.stages)

    def check_stages(self) -> None:
        """Raise StageLost for a stage whose actor died, or that left a ping unanswered for `stall_timeout`
        (that one is killed, so Ray restarts it like a dead one)."""
        now = time.monotonic()
        for i, ref in enumerate(self.pings):
            if ray.wait([ref], timeout=0)[0]:
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    raise StageLost(i, f"its actor died ({type(exc).__name__})") from None
                if answer["generation"] != self.generation:  # the ping reached a restarted actor
                    raise StageLost(i, f"its actor was restarted (now pid {answer['pid']})")
                self.pings[i], self.ping_sent[i] = self.stages[i].ping.remote(), now
            elif now - self.ping_sent[i] > self.cfg.stall_timeout:
                ray.kill(self.stages[i], no_restart=False)
                raise StageLost(i, f"it answered no ping for {self.cfg.stall_timeout:g} s")

    def wait(self, targets: list[tuple[str, int, int]]) -> dict:
        """Block until the ledger reports the targets; raise if a stage failed, was lost, or nothing moves."""
        last_progress = time.monotonic()
        while True:
            status = ray.get(self.ledger.wait.remote(targets, POLL_SECONDS))
            if status["error"]:
                raise PipelineError(status["error"])
            if status["done"]:
                return status["counts"]
            self.check_stages()
            if status["counts"] != self.last_counts:
                self.last_counts, last_progress = status["counts"], time.monotonic()
            elif time.monotonic() - last_progress > 2 * self.cfg.stall_timeout:  # later than any stuck stage is found
                raise PipelineError(f"no stage made progress for {2 * self.cfg.stall_timeout:g} s while all answer "
                                    f"pings (counts {status['counts']})")

    def batch(self, step: int) -> np.ndarray:
        """Indices of a global step's mini-batch (each epoch a fresh seeded shuffle)."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self.order_epoch != epoch:
            self.order = batch_order(len(self.data.x_train), self.cfg.batch_size, epoch, self.cfg.seed)
            self.order_epoch = epoch
        return self.order[i]

    def train_until(self, end_step: int, progress: tqdm) -> float:
        """Feed steps up to `end_step` (fewer once a stop is requested) with at most `window` in flight,
        then drain; return the seconds."""
        cfg, window = self.cfg, self.cfg.window()
        # The stage that finishes a step last: stage 0 after a locked flush, else the last stage.
        done_stage = 0 if cfg.mode in LOCKED_MODES else cfg.stages - 1
        probing = cfg.mode in SG_MODES and cfg.sg_probe_every and cfg.stages > 1
        finished, fed, start = self.next_step, self.next_step, time.time()
        for step in range(self.next_step, end_step):
            if self.stop_requested:
                break
            if step - finished >= window:
                finished = self.wait([("update", done_stage, step - window + 1)])["update"][done_stage]
                progress.update(finished - progress.n)
            indices = self.batch(step)
            for micro, part in enumerate(np.array_split(indices, cfg.resolved_micro_batches())):
                self.stages[0].feed.remote(step, micro, part, self.generation)
            if probing and step % cfg.sg_probe_every == 0:
                self.stages[0].feed_probe.remote(step, indices, self.generation)
                self.probes += 1
            fed = step + 1
        # Drain: every stage has applied every update, every SG target and probe has been used.
        targets = [("update", s, fed) for s in range(cfg.stages)]
        if cfg.mode in SG_MODES and not cfg.sg_off:
            targets += [("backward", s, fed) for s in range(cfg.stages - 1)]
        if self.probes:
            targets.append(("probe_backward", 0, self.probes))
        self.wait(targets)
        progress.update(fed - progress.n)
        self.next_step = fed
        return time.time() - start

    def drain_events(self) -> list[dict]:
        new = ray.get(self.ledger.drain.remote())
        self.events += new
        return new

    def evaluate(self) -> dict:
        """Test loss and accuracy with the stages' current weights, through the same actors."""
        count = len(self.data.x_test)
        batches = np.array_split(np.arange(count), max(1, -(-count // self.cfg.batch_size)))
        first = self.evaluated_batches
        for i, indices in enumerate(batches):
            self.stages[0].feed_eval.remote(first + i, indices, self.generation)
        self.evaluated_batches += len(batches)
        self.wait([("eval", self.cfg.stages - 1, self.evaluated_batches)])
        scored = [e for e in self.drain_events() if e["kind"] == "eval" and e["step"] >= first and "correct" in e]
        return {
            "test_accuracy": sum(e["correct"] for e in scored) / count,
            "test_loss": sum(e["loss_sum"] for e in scored) / count,
        }

    # -- checkpoints and recovery --------------------------------------------------------------------
    def _get_each(self, refs: list) -> list:
        """ray.get of one call per stage, naming the stage whose actor died."""
        results = []
        for i, ref in enumerate(refs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayActorError as exc:
                raise StageLost(i, f"its actor died ({type(exc).__name__})") from None
        return results

    def save(self) -> dict:
        """Every stage's checkpoint of the current (drained) step, and the ledger's counts with it."""
        files = self._get_each([stage.save.remote(self.next_step) for stage in self.stages])
        counts = ray.get(self.ledger.wait.remote([], 0))["counts"]
        self.checkpoint_events = len(self.events)
        return {"step": self.next_step, "stages": files, "ledger_counts": counts}

    def restore(self, checkpoint: dict) -> None:
        """Every stage back to `checkpoint` in a new generation; returns once all hold it."""
        self.generation += 1
        ray.get(self.ledger.reset.remote(self.generation, checkpoint["ledger_counts"]))
        deadline = time.monotonic() + RESTART_SECONDS
        while True:  # a stage still restarting (or lost meanwhile) fails its call: try the whole set again
            try:
                self._connect()
                self._get_each([stage.restore.remote(self.generation, f["file"], f["sha256"])
                                for stage, f in zip(self.stages, checkpoint["stages"])])
                break
            except (StageLost, ray.exceptions.RayActorError) as exc:
                if time.monotonic() > deadline:
                    raise PipelineError(f"the stages did not all come back within {RESTART_SECONDS:g} s ({exc}): "
                                        "the cluster has no room left for them (add a node)") from None
                time.sleep(0.5)
        counts = checkpoint["ledger_counts"]
        self.next_step, self.last_counts = checkpoint["step"], None
        self.probes, self.evaluated_batches = counts["probe"][0], counts["eval"][-1]
        del self.events[self.checkpoint_events:]
        self.placement = ray.get([stage.placement.remote() for stage in self.stages])
        self._ping_all()

    def recover(self, lost: StageLost, checkpoint: dict) -> dict:
        """Bring a lost stage back (Ray restarts its actor) and every stage to the checkpoint; return what happened."""
        detected_at, started, at_step = time.time(), time.monotonic(), max((self.last_counts or {}).get("update", [0]))
        self.restarts[lost.stage] += 1
        if self.restarts[lost.stage] > self.cfg.max_restarts:
            raise PipelineError(f"{lost} for the {self.restarts[lost.stage]}th time; --max-restarts is {self.cfg.max_restarts}")
        node_before = self.placement[lost.stage]["node_id"]
        log.warning("%s near step %d: restarting it and going back to the checkpoint of step %d",
                    lost, at_step, checkpoint["step"])
        self.restore(checkpoint)
        record = {"stage": lost.stage, "reason": lost.reason, "detected_at": round(detected_at, 3), "detected_near_step": at_step,
                  "rolled_back_to": checkpoint["step"], "restore_seconds": round(time.monotonic() - started, 3),
                  "node_before": node_before, "node_after": self.placement[lost.stage]["node_id"]}
        log.warning("stage %d is back on node %s after %.1f s; steps from %d are sent again", lost.stage,
                    record["node_after"][:12], record["restore_seconds"], checkpoint["step"])
        return record

    def request_stop(self, signum, frame) -> None:
        """First Ctrl-C: finish the steps in flight, checkpoint and stop. A second one stops at once."""
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log.warning("interrupted: finishing the steps in flight and writing a checkpoint (Ctrl-C again to stop at once)")


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
    utilization = [round(b / train_seconds, 4) for b in busy]
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
    store = None
    if run:
        cfg = replace(cfg, checkpoint_dir=_absolute(cfg.checkpoint_dir or str(run.file("checkpoints"))))
        store = CheckpointStore(cfg.checkpoint_dir)  # a storage that cannot be used is refused before the folder exists
        run.create()
    driver = _Driver(cfg, data)
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


def _summary(cfg: TrainConfig, dataset: str, driver: _Driver, state: dict, stopped_by: str | None,
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


def _evaluation(driver: _Driver, train_seconds: float) -> dict:
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
