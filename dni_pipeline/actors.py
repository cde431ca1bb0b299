"""The Ray layer: one actor per stage, sending activations and gradients straight to its neighbours,
and a ledger actor that collects what the stages did so the driver can pace and report.

Stage actors are ordinary (single-threaded) actors: Ray runs the calls one caller makes in the order
it made them, so stage i sees stage i-1's batches in step order, and a stage never blocks on another.
"""

import asyncio
import os
import time
import traceback
import warnings

import numpy as np
import ray
import torch

from .config import TrainConfig
from .network import build_stages, parse_arch, stage_output_shapes
from .stage import Message, Stage
from .synthetic_gradients import SyntheticGradient

__all__ = ["StageActor", "Ledger"]


@ray.remote(num_cpus=0)
class Ledger:
    """Counts each stage's handled messages and optimizer updates, keeps their timed events, and wakes
    the driver when a count it waits for is reached (or a stage has failed)."""

    def __init__(self, num_stages: int):
        self.counts = {kind: [0] * num_stages for kind in ("forward", "backward", "eval", "update")}
        self.events: list[dict] = []
        self.error: str | None = None
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:  # created inside the actor's event loop
            self._changed = asyncio.Condition()
        return self._changed

    async def report(self, event: dict) -> None:
        self.events.append(event)
        self.counts[event["kind"]][event["stage"]] += 1
        self.counts["update"][event["stage"]] += event["updates"]
        async with self._condition():
            self._condition().notify_all()

    async def fail(self, message: str) -> None:
        self.error = self.error or message
        async with self._condition():
            self._condition().notify_all()

    async def wait(self, targets: list[tuple[str, int, int]], timeout: float) -> dict:
        """Return when every (kind, stage, count) is reached, a stage failed, or `timeout` passed."""
        reached = lambda: all(self.counts[k][s] >= n for k, s, n in targets)  # noqa: E731
        try:
            async with self._condition():
                await asyncio.wait_for(self._condition().wait_for(lambda: reached() or self.error), timeout)
        except asyncio.TimeoutError:
            pass
        return {"done": reached(), "error": self.error, "counts": self.counts}

    async def drain(self) -> list[dict]:
        events, self.events = self.events, []
        return events


class StageActor:
    """Holds stage `index` of the network; stage 0 also holds the data and is the only one the driver feeds."""

    def __init__(self, config: dict, index: int, input_shape: tuple, num_classes: int, total_steps: int,
                 ledger, x_train=None, y_train=None, x_test=None, y_test=None):
        cfg = TrainConfig(**config)
        torch.set_num_threads(max(1, int(cfg.cpus_per_stage)))
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.index, self.ledger = index, ledger
        self.device = torch.device(cfg.device)
        self.data = {"train": (x_train, y_train), "eval": (x_test, y_test)}
        self.delay = cfg.stage_delay_ms[index] / 1000.0 if cfg.stage_delay_ms else 0.0
        layers = parse_arch(cfg.arch)
        module = build_stages(layers, input_shape, num_classes, cfg.stages, cfg.seed)[index].to(self.device)
        sg_model = None
        if cfg.mode != "backprop" and index < cfg.stages - 1:
            torch.manual_seed(cfg.seed + 1 + index)
            shape = stage_output_shapes(layers, input_shape, cfg.stages)[index]
            conditioned = num_classes if cfg.mode == "cdni" else None
            sg_model = SyntheticGradient(shape, cfg.resolved_sg_hidden(), conditioned).to(self.device)
        self.core = Stage(index, cfg.stages, module, cfg.mode, self._send, lr=cfg.lr, lr_schedule=cfg.lr_schedule,
                          total_steps=total_steps, sg_model=sg_model, sg_lr=cfg.sg_lr, sg_trainable=not cfg.sg_off)
        self.prev = self.next = None
        self.transport_seconds = 0.0

    def connect(self, prev, next) -> None:
        self.prev, self.next = prev, next

    def placement(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"stage": self.index, "node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "device": str(self.device), "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid()}

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.core.module.state_dict().items()}

    # -- messages (called by the driver for stage 0, by the neighbours otherwise) ---------------
    def feed(self, step: int, indices: np.ndarray) -> None:
        x, y = self._batch("train", indices)
        self._handle("forward", step, lambda: self.core.forward(step, x, y))

    def feed_eval(self, batch: int, indices: np.ndarray) -> None:
        x, y = self._batch("eval", indices)
        self._handle("eval", batch, lambda: self.core.evaluate(batch, x, y))

    def forward(self, step: int, h: np.ndarray, labels: np.ndarray) -> None:
        self._handle("forward", step, lambda: self.core.forward(step, self._tensor(h), self._tensor(labels)))

    def backward(self, step: int, grad: np.ndarray) -> None:
        self._handle("backward", step, lambda: self.core.backward(step, self._tensor(grad)))

    def eval_forward(self, batch: int, h: np.ndarray, labels: np.ndarray) -> None:
        self._handle("eval", batch, lambda: self.core.evaluate(batch, self._tensor(h), self._tensor(labels)))

    # -- internals -----------------------------------------------------------------------------
    def _batch(self, split: str, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data[split]
        return self._tensor(x[indices]), self._tensor(y[indices])

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def _send(self, message: Message) -> None:
        start = time.perf_counter()
        array = message.tensor.detach().cpu().numpy()
        if message.kind == "backward":
            self.prev.backward.remote(message.step, array)
        else:
            labels = message.labels.cpu().numpy()
            target = self.next.forward if message.kind == "forward" else self.next.eval_forward
            target.remote(message.step, array, labels)
        self.transport_seconds += time.perf_counter() - start

    def _handle(self, kind: str, step: int, work) -> None:
        """Run one message's work, timed; report it (or the failure) to the ledger."""
        start, updates, self.transport_seconds = time.time(), self.core.updates, 0.0
        try:
            if self.delay and kind != "eval":
                time.sleep(self.delay)  # an emulated slower device: its results come out later
            metrics = work()
        except Exception:
            self.ledger.fail.remote(f"stage {self.index} failed on {kind} of step {step}:\n{traceback.format_exc()}")
            raise
        self.ledger.report.remote({
            "stage": self.index, "kind": kind, "step": step, "start": start, "end": time.time(),
            "transport": self.transport_seconds, "updates": self.core.updates - updates, **metrics,
        })
