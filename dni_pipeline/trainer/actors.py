"""The Ray layer: one actor per stage, sending activations and gradients straight to its neighbours,
and a ledger actor that collects what the stages did so the driver can pace and report.

Stage actors are ordinary (single-threaded) actors: Ray runs the calls one caller makes in the order
it made them, so stage i sees stage i-1's batches in step order, and a stage never blocks on another.
"""

import asyncio
import functools
import logging
import os
import queue
import threading
import time
import traceback
import warnings

import numpy as np
import ray
import torch

from .checkpoints import CheckpointStore
from .config import TrainConfig
from .data import StepBatches
from .delayed import DelayedStage
from .model import Network
from .stage import SG_MODES, WORK_KINDS, Message, NonFiniteError, Stage

__all__ = ["StageActor", "Ledger"]

log = logging.getLogger("dni_pipeline.trainer")


@ray.remote(num_cpus=0)
class Ledger:
    """Counts each stage's handled messages and optimizer updates, keeps their timed events, and wakes
    the driver when a count it waits for is reached (or a stage has failed)."""

    def __init__(self, num_stages: int):
        kinds = ("forward", "backward", "synthetic", "eval", "probe", "probe_backward", "flush", "update")
        self.counts = {kind: [0] * num_stages for kind in kinds}
        self.generation = 0  # reports of an earlier generation (before a rollback) are dropped
        self.events: list[dict] = []
        self.error: str | None = None
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # created inside the actor's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def report(self, events: list[dict], generation: int) -> None:
        if generation != self.generation:
            return
        for event in events:
            self.events.append(event)
            self.counts[event["kind"]][event["stage"]] += 1
            self.counts["update"][event["stage"]] += event["updates"]
        await self._notify()

    async def fail(self, message: str, generation: int) -> None:
        if generation == self.generation:
            self.error = self.error or message
            await self._notify()

    async def reset(self, generation: int, counts: dict) -> None:
        """Start a new generation from a checkpoint's counts: what the stages did after it is forgotten."""
        self.generation, self.counts, self.events, self.error = generation, counts, [], None
        await self._notify()

    async def _notify(self) -> None:
        async with self._condition():
            self._condition().notify_all()

    async def wait(self, targets: list[tuple[str, int, int]], timeout: float, any_of: bool = False) -> dict:
        """Return when every (kind, stage, count) is reached (`any_of`: one), a stage failed, or `timeout` passed."""
        reached = lambda: (any if any_of else all)(self.counts[k][s] >= n for k, s, n in targets)  # noqa: E731
        try:
            async with self._condition():
                await asyncio.wait_for(self._condition().wait_for(lambda: reached() or self.error), timeout)
        except asyncio.TimeoutError:
            pass
        return {"done": reached(), "error": self.error, "counts": self.counts}

    async def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


class DelayedLink:
    """Emulated link latency: calls are made `latency` seconds after they are handed over, by a
    background thread, in order, so neither the sender's nor the receiver's compute waits."""

    def __init__(self, latency: float):
        self.latency = latency
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, method, *args) -> None:
        self.queue.put((time.monotonic() + self.latency, method, args))

    def _run(self) -> None:
        while True:
            due, method, args = self.queue.get()
            time.sleep(max(0.0, due - time.monotonic()))
            method.remote(*args)


class StageActor:
    """Holds stage `index` of the network; stage 0 also holds the data and is the only one the driver feeds."""

    def __init__(self, config: dict, index: int, network_ref: list, total_steps: int):
        cfg = TrainConfig(**config)
        network: Network = ray.get(network_ref[0])  # this stage's part of the model, held in the store by the driver
        torch.set_num_threads(max(1, int(cfg.cpus_per_stage)))
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.index = index
        self.device = torch.device(cfg.device)
        self.delay = cfg.stage_delay_ms[index] / 1000.0 if cfg.stage_delay_ms else 0.0
        self.link = DelayedLink(cfg.link_latency_ms / 1000.0) if cfg.link_latency_ms else None
        module = network.build(index).to(self.device)
        sg_model = aux_head = None
        if index < cfg.stages - 1:
            torch.manual_seed(cfg.seed + 1 + index)
            if cfg.mode in SG_MODES:
                hidden = cfg.resolved_sg_hidden(network.output_shape(index))
                sg_model = network.build_synthetic_gradient(index, hidden, cfg.mode == "cdni")
                sg_model = sg_model.to(self.device)
            elif cfg.mode == "dgl":
                aux_head = network.build_aux_head(index, cfg.aux_hidden).to(self.device)
        input_model = None
        if cfg.synthetic_inputs and index > 0:
            torch.manual_seed(cfg.seed + 1000 + index)
            input_model = network.build_synthetic_input(index, cfg.resolved_input_hidden(network.input_shape(index)))
            input_model = input_model.to(self.device)
        self.synthetic_inputs = cfg.synthetic_inputs
        self.batching = (cfg.batch_size, cfg.seed)  # under synthetic inputs: to find a real input's batch
        stage_class = DelayedStage if cfg.mode == "delayed" else Stage
        self.stage = stage_class(index, cfg.stages, module, cfg.mode, self._send,
                                 config=cfg.stage_config(index, total_steps), sg_model=sg_model, aux_head=aux_head,
                                 objective=network.objective, input_model=input_model)
        self.prev = self.next = self.ledger = None
        self.transport_seconds = 0.0
        self.nan_step = cfg.inject_nan[1] if cfg.inject_nan and cfg.inject_nan[0] == index else None
        self.store = CheckpointStore(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
        self.generation = 0  # messages of another generation (from before a rollback) are dropped
        # Events go to the ledger together, once one changes a count the driver waits on (an update, an SG
        # target used, a real input under synthetic inputs, an evaluation or probe): one call a step instead of
        # one a message.
        self.unreported: list[dict] = []
        self.sg_targets = cfg.mode in SG_MODES and not cfg.sg_off
        with warnings.catch_warnings():  # the property reads a deprecated one inside Ray
            warnings.simplefilter("ignore", DeprecationWarning)
            reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        if reconstructed:
            self.generation = -1  # nothing is taken until the driver has restored a consistent set
            self._reload_latest()

    def connect(self, prev, next, ledger) -> None:
        """The actors this stage talks to: given after the constructor (and again after a restart) because
        Ray cannot promise a restartable actor the references among its constructor arguments."""
        self.prev, self.next, self.ledger = prev, next, ledger

    def attach_data(self, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
        """Stage 0's data (every stage's under synthetic inputs), from the driver's object store (again after a
        restart, like `connect`)."""
        self.data = {"train": (x_train, y_train), "eval": (x_test, y_test)}
        self.batches = StepBatches(len(x_train), *self.batching)

    def weights(self) -> dict:
        """The stage module's state dict, on the CPU: a piece of the trained model's."""
        return {k: v.detach().cpu().clone() for k, v in self.stage.module.state_dict().items()}

    def ping(self) -> dict:
        return {"stage": self.index, "pid": os.getpid(), "generation": self.generation, "updates": self.stage.updates}

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self, step: int) -> dict:
        """Write this stage's state between steps; the driver records the file in the run's manifest."""
        name = f"stage{self.index}-step{step:08d}.pt"
        sha256 = self.store.save(name, self.stage.state_dict())
        return {"stage": self.index, "file": name, "sha256": sha256, "updates": self.stage.updates}

    def restore(self, generation: int, file: str, sha256: str) -> dict:
        """Take the state of `file` and start `generation`. Always from the file: even a stage that applied no
        update since has run forwards since, which moved its BatchNorm statistics."""
        self.stage.load_state_dict(self.store.load(file, sha256))
        self.generation, self.unreported = generation, []
        return self.ping()

    def _reload_latest(self) -> None:
        """A restarted actor: take this stage's newest checkpoint at once (the driver may then pick an older
        one, the newest that every stage has)."""
        files = self.store.names(f"stage{self.index}-") if self.store else []
        if files:
            self.stage.load_state_dict(self.store.load(files[-1]))
        log.warning("stage %d restarted (pid %d) and reloaded %s", self.index, os.getpid(), files[-1] if files else "nothing")

    def placement(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"stage": self.index, "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "device": str(self.device), "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid()}

    # -- messages from the driver (stage 0 only) -------------------------------------------------
    def feed(self, step: int, parts: list[np.ndarray], generation: int) -> None:
        """A step's micro-batches (index arrays), in one call: a locked step is M forwards but one message. Under
        synthetic inputs every stage is fed, and this is its update step."""
        if self.synthetic_inputs:
            x, y = self._batch("train", parts[0])
            self._handle("synthetic", step, 0, None, generation,
                         lambda: self.stage.synthetic_step(step, self._poisoned(step, x), y))
            return
        for micro, indices in enumerate(parts):
            x, y = self._batch("train", indices)
            self._handle("forward", step, micro, None, generation,
                         functools.partial(self.stage.forward, step, micro, self._poisoned(step, x), y))

    def relay(self, step: int, indices: np.ndarray, generation: int) -> None:
        """Synthetic inputs, stage 0: start a step's real inputs through the pipeline (its update was `feed`)."""
        x, y = self._batch("train", indices)
        x = self._poisoned(step, x)
        self._handle("forward", step, 0, None, generation, lambda: self.stage.real_input(step, 0, x, y, x))

    def flush(self, end: int, generation: int) -> None:
        """Delayed mode: the segment ends at step `end`; apply the gradients held for its last batches."""
        self._handle("flush", end, 0, None, generation, lambda: self.stage.flush(end))

    def feed_eval(self, batch: int, indices: np.ndarray, generation: int) -> None:
        x, y = self._batch("eval", indices)
        self._handle("eval", batch, 0, None, generation, lambda: self.stage.evaluate(batch, x, y))

    def feed_probe(self, probe_id: int, indices: np.ndarray, generation: int) -> None:
        x, y = self._batch("train", indices)
        self._handle("probe", probe_id, 0, None, generation, lambda: self.stage.probe(probe_id, x, y))

    # -- messages from the neighbours ------------------------------------------------------------
    def forward(self, step: int, micro: int, h: np.ndarray, labels: np.ndarray, sent_at: float, generation: int) -> None:
        h = self._poisoned(step, self._tensor(h))
        if self.synthetic_inputs:  # the real input of a step: the input model's target for its batch
            x, _ = self._batch("train", self.batches[step])
            self._handle("forward", step, micro, sent_at, generation,
                         lambda: self.stage.real_input(step, micro, h, self._tensor(labels), x))
            return
        self._handle("forward", step, micro, sent_at, generation,
                     lambda: self.stage.forward(step, micro, h, self._tensor(labels)))

    def backward(self, step: int, micro: int, grad: np.ndarray, sent_at: float, generation: int) -> None:
        self._handle("backward", step, micro, sent_at, generation,
                     lambda: self.stage.backward(step, micro, self._tensor(grad)))

    def eval_forward(self, batch: int, micro: int, h: np.ndarray, labels: np.ndarray, sent_at: float,
                     generation: int) -> None:
        self._handle("eval", batch, micro, sent_at, generation,
                     lambda: self.stage.evaluate(batch, self._tensor(h), self._tensor(labels)))

    def probe(self, probe_id: int, micro: int, h: np.ndarray, labels: np.ndarray, sent_at: float, generation: int) -> None:
        self._handle("probe", probe_id, micro, sent_at, generation,
                     lambda: self.stage.probe(probe_id, self._tensor(h), self._tensor(labels)))

    def probe_backward(self, probe_id: int, micro: int, grad: np.ndarray, sent_at: float, generation: int) -> None:
        self._handle("probe_backward", probe_id, micro, sent_at, generation,
                     lambda: self.stage.probe_backward(probe_id, self._tensor(grad)))

    # -- internals -----------------------------------------------------------------------------
    def _batch(self, split: str, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[split]
        return self._tensor(x[indices]), self._tensor(y[indices])

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def _send(self, message: Message) -> None:
        """Hand a message to its neighbour: arrays (zero-copy for the receiver on the same node) and
        the send time, so the receiver can measure the transit."""
        start = time.perf_counter()
        neighbour = self.prev if message.kind in BACKWARD_KINDS else self.next
        method = getattr(neighbour, RECEIVER[message.kind])
        args = [message.step, message.micro, message.tensor.detach().cpu().numpy()]
        if message.labels is not None:
            args.append(message.labels.cpu().numpy())
        args += [time.time(), self.generation]
        if self.link:
            self.link.submit(method, *args)
        else:
            method.remote(*args)
        self.transport_seconds += time.perf_counter() - start

    def _poisoned(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Fault injection (`inject_nan`): this stage's input of one step becomes NaN."""
        return x * float("nan") if step == self.nan_step else x

    def _handle(self, kind: str, step: int, micro: int, sent_at: float | None, generation: int, work) -> None:
        """Run one message's work, timed; report it (or the failure) to the ledger. A message of another
        generation was sent before a rollback: its step is sent again, so it is dropped."""
        if generation != self.generation:
            return
        start, updates, self.transport_seconds = time.time(), self.stage.updates, 0.0
        try:
            if self.delay and kind in WORK_KINDS:
                time.sleep(self.delay)  # an emulated slower device: its results come out later
            metrics = work()
        except NonFiniteError as exc:
            self.ledger.fail.remote(str(exc), generation)
            raise
        except Exception:
            self.ledger.fail.remote(f"stage {self.index} failed on {kind} of step {step}:\n{traceback.format_exc()}",
                                    generation)
            raise
        event = {"stage": self.index, "kind": kind, "step": step, "micro": micro, "start": start, "end": time.time(),
                 "transit": None if sent_at is None else start - sent_at,
                 "transport": self.transport_seconds, "updates": self.stage.updates - updates, **metrics}
        self.unreported.append(event)
        waited_on = kind == "backward" and self.sg_targets or kind == "forward" and self.synthetic_inputs
        if event["updates"] or kind not in WORK_KINDS or waited_on:
            self.ledger.report.remote(self.unreported, generation)
            self.unreported = []


BACKWARD_KINDS = ("backward", "probe_backward")
RECEIVER = {"forward": "forward", "eval": "eval_forward", "probe": "probe", "backward": "backward",
            "probe_backward": "probe_backward"}
