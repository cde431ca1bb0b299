"""The driver: starts the stage actors, feeds stage 0 with bounded steps in flight, evaluates through
the same actors, checkpoints the stages and brings lost ones back. It never carries activations or
gradients.

Faults: every stage saves its state at a checkpoint step (the pipeline drained, so the set is
consistent). A stage actor that dies (or answers no ping for `stall_timeout`) is restarted by Ray;
the driver then moves every stage back to the last checkpoint in a new *generation*: messages of the
old one are dropped, so the steps since the checkpoint are sent again and no step reaches a stage's
weights twice (each stage also checks this itself).
"""

import logging
import signal
import time
import uuid

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from .actors import Ledger, StageActor
from .cluster import STAGE_SLOT
from .config import TrainConfig
from .data import Dataset, batch_order
from .errors import UserError
from .runtime import require_resources
from .stage import LOCKED_MODES, SG_MODES

__all__ = ["Driver", "PipelineError", "StageLost", "check_capacity"]

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

    @classmethod
    def died(cls, stage: int, error: Exception) -> "StageLost":
        return cls(stage, f"its actor died ({type(error).__name__})")


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


class Driver:
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
                    raise StageLost.died(i, exc) from None
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
                raise StageLost.died(i, exc) from None
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
            raise PipelineError(f"{lost}, and --max-restarts {self.cfg.max_restarts} allows no more restarts")
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
