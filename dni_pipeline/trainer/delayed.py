"""The delayed-gradient stage (mode ``delayed``): unlocked by the true gradient, applied late (DDG, Huo et al. 2018).

A stage before the last computes its forwards on new batches without waiting and steps on the true gradient
dL/dh of a batch it sent once that gradient comes back. The delay is a number of steps d, fixed per stage: the
gradient of batch s is applied after the stage's forward of batch s + d and before its forward of s + d + 1, so
the weights batch t is computed with are those after the gradients of batches 0 .. t - d - 1, whatever the
timing, and a run is reproducible. A stage waits only when the gradient it must apply next is late; with d = 0
it is locked backprop. A segment's end (an evaluation, a checkpoint) flushes the gradients still held, in order.

What a batch in flight keeps, by `staleness` (the treatment of the weights having moved since its forward):

- ``none``: its graph on a copy of the weights it was computed with, so the gradient applied is exactly the
  true gradient at those weights (DDG). The gradient at its input goes upstream as soon as its target arrives.
- ``recompute``: only its input; when its turn comes the block is run again on it with the weights of now and
  the target is backpropagated through that (Features Replay, Huo et al. 2018), so gradient and weights agree.
  The gradient at its input goes upstream then, so a stage's delay must be at least its successor's.
- ``lookahead``: its graph on weights extrapolated d steps along the last update, w + d (w - w_prev), the
  weights it will be applied to if the steps go on as they went (a weight prediction, as in PipeMare and
  SpecTrain); a stage with d = 0 computes on its own weights.

At most d + 1 batches are held at once (a forward waits for the update d + 1 steps back). The bytes they hold
(saved tensors, weight copies, gradients waiting for their turn) are reported with each forward as
``stored_bytes``; summary.json keeps each stage's peak.
"""

import math
from collections import deque

import torch

from .stage import Message, Stage, _buffers_kept

__all__ = ["STALENESS", "DelayedStage"]

STALENESS = ("none", "recompute", "lookahead")


def _bytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is not None and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


class DelayedStage(Stage):
    """A stage of ``delayed`` mode; the last stage steps on its true loss at once, as in ``dni``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay, self.staleness = self.config.delay, self.config.staleness
        self.held: dict[int, tuple] = {}  # step -> (input, output, weights) or, under recompute, (input,)
        self.ready: dict[int, tuple] = {}  # step -> ("gradients", weight gradients) or ("target", dL/d output)
        self.waiting: deque = deque()  # forwards that came before the update they must see
        self.forwards = 0  # the next step to forward
        self.flush_at = math.inf  # the end of the segment being flushed
        self.stored: dict[int, int] = {}  # step -> bytes held for it
        self.peak_stored = 0
        self.last_update: list[torch.Tensor] | None = None  # lookahead: w - w_prev of the last step

    # -- training --------------------------------------------------------------------------------
    def forward(self, step: int, micro: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        if self.is_last:
            return super().forward(step, micro, h_in, labels)
        if self.waiting or self.updates < step - self.delay:
            self.waiting.append((step, micro, h_in, labels))
            return {}
        metrics = self._forward_now(step, micro, h_in, labels)
        self._apply_due()
        return metrics

    def backward(self, step: int, micro: int, grad: torch.Tensor) -> dict:
        """The true gradient at this stage's output for batch `step`: sent on at once (``none``, ``lookahead``),
        applied in its turn."""
        self._check("gradient", step, grad)
        if self.staleness == "recompute":
            self.ready[step] = ("target", grad)
        else:
            h_in, out, weights = self.held.pop(step)
            params = list(weights.values())
            inputs = ([h_in] if self.index > 0 else []) + params
            grads = torch.autograd.grad(out, inputs, grad, allow_unused=True, materialize_grads=True)
            if self.index > 0:
                self.send(Message("backward", step, grads[0], micro=micro))
            self.ready[step] = ("gradients", grads[1:] if self.index > 0 else grads)
        self._store(step, self.stored.get(step, 0) + _bytes(self.ready[step][1]))
        self._apply_due()
        return {"peak_stored_bytes": self.peak_stored}

    def flush(self, end: int) -> dict:
        """The segment ends at `end`: the gradients of its last batches are applied without waiting for
        the forwards d steps later, which it does not have."""
        self.flush_at = end
        self._apply_due()
        return {}

    # -- internals -----------------------------------------------------------------------------
    def _forward_now(self, step: int, micro: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        h_in = h_in.requires_grad_(self.index > 0 and self.staleness != "recompute")
        if self.staleness == "recompute":
            with torch.no_grad():
                out = self._check("activation", step, self.module(h_in))
            self.held[step] = (h_in,)
            stored = _bytes([h_in])
        else:
            weights = {name: p.detach().clone() for name, p in self.module.named_parameters()}
            if self.staleness == "lookahead" and self.last_update is not None:
                for value, moved in zip(weights.values(), self.last_update):
                    value.add_(moved, alpha=self.delay)
            weights = {name: value.requires_grad_() for name, value in weights.items()}
            saved = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
                out = self._check("activation", step, torch.func.functional_call(self.module, weights, (h_in,)))
            self.held[step] = (h_in, out, weights)
            stored = _bytes([*saved, *weights.values(), out, h_in])
        self._store(step, stored)
        self.forwards = step + 1
        self.send(Message("forward", step, out.detach(), labels, micro))
        return {"peak_stored_bytes": self.peak_stored}

    def _store(self, step: int, size: int) -> None:
        self.stored[step] = size
        self.peak_stored = max(self.peak_stored, sum(self.stored.values()))

    def _apply_due(self) -> None:
        """Apply every gradient whose turn has come, then run the forwards that were waiting for them."""
        while True:
            step = self.updates
            if step in self.ready and self.forwards > self._last_forward_before(step):
                self._apply(step)
            elif self.waiting and self.updates >= self.waiting[0][0] - self.delay:
                self._forward_now(*self.waiting.popleft())
            else:
                return

    def _last_forward_before(self, step: int) -> int:
        """The last forward that must run before the gradient of `step` is applied."""
        if step < self.flush_at <= step + self.delay:
            return self.flush_at - 1
        return step + self.delay

    def _apply(self, step: int) -> None:
        kind, value = self.ready.pop(step)
        if kind == "target":
            (h_in,) = self.held.pop(step)
            h_in = h_in.detach().requires_grad_(self.index > 0)
            with _buffers_kept(self.module):  # its forward moved the running statistics already
                out = self._check("activation", step, self.module(h_in))
            out.backward(value)
            if self.index > 0:
                self.send(Message("backward", step, h_in.grad))
        else:
            for param, grad in zip(self.module.parameters(), value):
                param.grad = grad
        before = [p.detach().clone() for p in self.module.parameters()] if self.staleness == "lookahead" else None
        self._step(step)
        if before is not None:
            self.last_update = [p.detach() - b for p, b in zip(self.module.parameters(), before)]
        del self.stored[step]

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.held or self.ready or self.waiting:
            raise RuntimeError(f"stage {self.index} has work in flight: checkpoints are taken between steps")
        return {**super().state_dict(), "last_update": self.last_update}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.last_update = state.get("last_update")
        for held in (self.held, self.ready, self.waiting, self.stored):
            held.clear()
        self.forwards, self.flush_at = self.updates, math.inf
