"""The driver: starts the stage actors, feeds stage 0 with bounded steps in flight, evaluates through
the same actors and checkpoints the stages (recovery.py brings lost ones back). It never carries
activations or gradients."""

import dataclasses
import logging
import signal
import time
import uuid

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.ray_session import STAGE_SLOT, require_resources

from .actors import Ledger, StageActor
from .config import TrainConfig
from .data import PlacedData, StepBatches, place_data
from .model import Network
from .models import network_from_config
from .objective import scores_to_metrics
from .recovery import PipelineError, StageWatch, get_each
from .stage import LOCKED_MODES, SG_MODES

__all__ = ["Driver", "check_capacity"]

log = logging.getLogger("dni_pipeline.trainer")

POLL_SECONDS = 1.0  # how often the driver looks at the stages while it waits


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
    """One run's stage actors and ledger, and the steps, evaluations and checkpoints it sends them.
    Without a `network`, the model is the one `cfg` names (--model, or --arch)."""

    def __init__(self, cfg: TrainConfig, data, network: Network | None = None):
        self.cfg = cfg
        self.data: PlacedData = place_data(data)
        self.network = network or network_from_config(cfg, self.data)
        self.network.prepare(self.data, cfg.mode, cfg.synthetic_inputs)
        self.steps_per_epoch = self.data.num_train // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"--batch-size {cfg.batch_size} exceeds the {self.data.num_train} training samples: lower it")
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        # The ledger lives on the driver's node: losing another node must not lose the run's bookkeeping.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.ledger = Ledger.options(scheduling_strategy=here).remote(cfg.stages)
        actor_class = ray.remote(StageActor)
        run_id = uuid.uuid4().hex[:8]
        # Each stage's part of the network, put once and held here, and handed over inside a list (so Ray does not
        # resolve it as an argument of its own): a restarted actor's constructor reads it again from the store.
        self.network_refs = [ray.put(self.network.for_stage(i)) for i in range(cfg.stages)]
        self.stages = [  # named, so `ray list actors` (and a test) can find stage i of a run
            actor_class.options(**stage_resources(cfg), name=f"dni-{run_id}-stage{i}", max_restarts=cfg.max_restarts,
                                max_task_retries=0).remote(
                dataclasses.asdict(cfg), i, [self.network_refs[i]], self.total_steps)
            for i in range(cfg.stages)
        ]
        self.generation = 0
        self.connect()
        self.placement = ray.get([stage.placement.remote() for stage in self.stages])
        self.watch = StageWatch(self.stages, self.placement, cfg.stall_timeout)
        self.restarts = [0] * cfg.stages
        self.events: list[dict] = []
        self.checkpoint_events = 0  # events before the last checkpoint: those after it are redone on a rollback
        self.next_step = self.evaluated_batches = self.probes = 0
        self.batches = StepBatches(self.data.num_train, cfg.batch_size, cfg.seed)
        self.last_counts: dict | None = None
        self.stop_requested = False

    def close(self) -> None:
        for actor in self.stages + [self.ledger]:
            ray.kill(actor)

    def connect(self) -> None:
        """Neighbours and data (stage 0's, every stage's under synthetic inputs): what a stage actor is given after
        its constructor, so also after a restart."""
        fed = self.stages if self.cfg.synthetic_inputs else self.stages[:1]
        ray.get([stage.attach_data.remote(*self.data.refs) for stage in fed] + [
            stage.connect.remote(self.stages[i - 1] if i else None, self.stages[i + 1] if i + 1 < self.cfg.stages else None,
                                 self.ledger)
            for i, stage in enumerate(self.stages)
        ])

    def wait(self, targets: list[tuple[str, int, int]], any_of: bool = False) -> dict:
        """Block until the ledger reports the targets (or, `any_of`, one of them); raise if a stage failed, was
        lost, or nothing moves."""
        last_progress = time.monotonic()
        while True:
            status = ray.get(self.ledger.wait.remote(targets, POLL_SECONDS, any_of))
            if status["error"]:
                raise PipelineError(status["error"])
            if status["done"]:
                return status["counts"]
            self.watch.check(self.generation)
            if status["counts"] != self.last_counts:
                self.last_counts, last_progress = status["counts"], time.monotonic()
            elif time.monotonic() - last_progress > 2 * self.cfg.stall_timeout:  # later than any stuck stage is found
                raise PipelineError(f"no stage made progress for {2 * self.cfg.stall_timeout:g} s while all answer "
                                    f"pings (counts {status['counts']})")

    def train_until(self, end_step: int, progress: tqdm) -> float:
        """Feed steps up to `end_step` (fewer once a stop is requested) with at most `window` in flight,
        then drain; return the seconds."""
        if self.cfg.synthetic_inputs:
            return self._train_unlocked_inputs(end_step, progress)
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
            indices = self.batches[step]
            self.stages[0].feed.remote(step, np.array_split(indices, cfg.resolved_micro_batches()), self.generation)
            if probing and step % cfg.sg_probe_every == 0:
                self.stages[0].feed_probe.remote(step, indices, self.generation)
                self.probes += 1
            fed = step + 1
        if cfg.mode == "delayed":  # the gradients of the last batches are not held for forwards that will not come
            for stage in self.stages:
                stage.flush.remote(fed, self.generation)
        # Drain: every stage has applied every update, every SG target and probe has been used.
        targets = [("update", s, fed) for s in range(cfg.stages)]
        if cfg.mode in SG_MODES and not cfg.sg_off:
            targets += [("backward", s, fed) for s in range(cfg.stages - 1)]
        return self._drain(targets, fed, progress, start)

    def _train_unlocked_inputs(self, end_step: int, progress: tqdm) -> float:
        """Synthetic inputs: every stage is fed every step, its update, and waits for no other; each has at most
        `window` steps fed and not yet applied, so a fast stage runs ahead of a slow one at its own rate. The
        real inputs are a stream of their own: stage 0 relays each step's data through the pipeline, with at
        most `window` steps not yet through the last stage. So every queue stays bounded, the real activations
        and SG targets come at the pace of the slowest stage, and no update waits for them; a segment ends
        when every stage has applied its steps and every real input has been through."""
        cfg, window, last = self.cfg, self.cfg.window(), self.cfg.stages - 1
        counts = self.last_counts = ray.get(self.ledger.wait.remote([], 0))["counts"]
        fed, relayed, start = [self.next_step] * cfg.stages, self.next_step, time.time()
        while min(fed + [relayed]) < end_step:
            if self.stop_requested:  # the streams behind catch up with the one furthest on: all stop at one step
                end_step = max(fed + [relayed])
            for i, stage in enumerate(self.stages):
                while fed[i] < end_step and fed[i] - counts["update"][i] < window:
                    stage.feed.remote(fed[i], [self.batches[fed[i]]], self.generation)
                    fed[i] += 1
            while relayed < end_step and relayed - counts["forward"][last] < window:
                self.stages[0].relay.remote(relayed, self.batches[relayed], self.generation)
                if cfg.sg_probe_every and relayed % cfg.sg_probe_every == 0:
                    self.stages[0].feed_probe.remote(relayed, self.batches[relayed], self.generation)
                    self.probes += 1
                relayed += 1
            waiting = [("update", i, fed[i] - window + 1) for i in range(cfg.stages) if fed[i] < end_step]
            if relayed < end_step:
                waiting.append(("forward", last, relayed - window + 1))
            if waiting:
                counts = self.wait(waiting, any_of=True)
                progress.update(min(counts["update"]) - progress.n)
        targets = [("update", s, end_step) for s in range(cfg.stages)] + [("forward", s, end_step) for s in range(cfg.stages)]
        return self._drain(targets + [("backward", s, end_step) for s in range(last)], end_step, progress, start)

    def _drain(self, targets: list[tuple[str, int, int]], end_step: int, progress: tqdm, start: float) -> float:
        """End a segment at `end_step` once the targets and every probe are reached; return its seconds."""
        if self.probes:
            targets = targets + [("probe_backward", 0, self.probes)]
        self.wait(targets)
        progress.update(end_step - progress.n)
        self.next_step = end_step
        return time.time() - start

    def drain_events(self) -> list[dict]:
        new = ray.get(self.ledger.drain.remote())
        self.events += new
        return new

    def evaluate(self) -> dict:
        """Test metrics (loss; accuracy and, for sequences, bits per token; the user's) with the stages'
        current weights, through the same actors."""
        count = self.data.num_test
        batches = np.array_split(np.arange(count), max(1, -(-count // self.cfg.batch_size)))
        first = self.evaluated_batches
        for i, indices in enumerate(batches):
            self.stages[0].feed_eval.remote(first + i, indices, self.generation)
        self.evaluated_batches += len(batches)
        self.wait([("eval", self.cfg.stages - 1, self.evaluated_batches)])
        scored = [e for e in self.drain_events() if e["kind"] == "eval" and e["step"] >= first and "count" in e]
        return scores_to_metrics(scored, "test_")

    def weights(self) -> dict:
        """The trained model's state dict, gathered from the stages: it loads into the whole model."""
        return self.network.whole_state_dict(get_each([stage.weights.remote() for stage in self.stages]))

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> dict:
        """Every stage's checkpoint of the current (drained) step, and the ledger's counts with it."""
        files = get_each([stage.save.remote(self.next_step) for stage in self.stages])
        counts = ray.get(self.ledger.wait.remote([], 0))["counts"]
        self.checkpoint_events = len(self.events)
        return {"step": self.next_step, "stages": files, "ledger_counts": counts}

    def request_stop(self, signum, frame) -> None:
        """First Ctrl-C: finish the steps in flight, checkpoint and stop. A second one stops at once."""
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log.warning("interrupted: finishing the steps in flight and writing a checkpoint (Ctrl-C again to stop at once)")
