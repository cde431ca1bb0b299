"""The update rules of one pipeline stage, in plain PyTorch: no Ray here, so every rule is testable.

A stage reacts to messages and emits messages through a `send` callback:
- ``forward(step, h, y)``: activations (and labels) from the stage before; sent on to the stage after.
- ``backward(step, grad)``: a gradient from the stage after. In ``backprop`` mode it is the true
  gradient of the loss w.r.t. this stage's output; in ``dni``/``cdni`` it is the regression target
  for this stage's synthetic-gradient model (bootstrapped: what the next stage computed through its
  own synthetic gradient, or the true gradient if the next stage is the last).
All gradients are of the batch-mean loss.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .synthetic_gradients import SyntheticGradient

__all__ = ["MODES", "Message", "Stage", "learning_rate"]

MODES = ("backprop", "dni", "cdni")


@dataclass
class Message:
    kind: str  # "forward" and "eval" go to the next stage, "backward" to the previous one
    step: int
    tensor: torch.Tensor
    labels: torch.Tensor | None = None


def learning_rate(base: float, schedule: str, step: int, total_steps: int) -> float:
    """Constant, or cosine decay from `base` to 0 over the run."""
    if schedule == "constant":
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


class Stage:
    """One block of the network with its optimizer and, in dni modes, its synthetic-gradient model."""

    def __init__(
        self,
        index: int,
        num_stages: int,
        module: nn.Module,
        mode: str,
        send: Callable[[Message], None],
        *,
        lr: float,
        lr_schedule: str,
        total_steps: int,
        sg_model: SyntheticGradient | None = None,
        sg_lr: float | None = None,
        sg_trainable: bool = True,
    ):
        self.index, self.num_stages, self.mode = index, num_stages, mode
        self.is_last = index == num_stages - 1
        self.module, self.send = module, send
        self.lr, self.lr_schedule, self.total_steps = lr, lr_schedule, total_steps
        self.optimizer = torch.optim.Adam(module.parameters(), lr=lr)
        self.sg = sg_model
        self.sg_trainable = sg_trainable
        self.sg_base_lr = sg_lr or lr
        self.sg_optimizer = torch.optim.Adam(sg_model.parameters(), lr=self.sg_base_lr) if sg_model else None
        # step -> what the later `backward(step, ...)` needs: (input, output) with graph in backprop,
        # (detached output, labels) for SG regression in dni modes. Bounded by the steps in flight.
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.updates = 0

    # -- messages ------------------------------------------------------------------------------
    def forward(self, step: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        """Run the block on a training batch; update now unless the mode must wait (backprop)."""
        h_in = h_in.requires_grad_(self.index > 0)
        out = self.module(h_in)
        if self.is_last:
            loss = F.cross_entropy(out, labels)
            self._update(step, loss, None, h_in)
            correct = (out.argmax(1) == labels).sum().item()
            return {"loss": loss.item(), "correct": correct, "count": len(labels)}
        if self.mode == "backprop":
            self.pending[step] = (h_in, out)
            self.send(Message("forward", step, out.detach(), labels))
            return {}
        self.send(Message("forward", step, out.detach(), labels))  # the next stage starts before we update
        h = out.detach()
        if self.sg_trainable:
            self.pending[step] = (h, labels)
        self._update(step, out, self.sg.predict(h, labels), h_in)
        return {}

    def backward(self, step: int, grad: torch.Tensor) -> dict:
        """True gradient (backprop: update now) or synthetic-gradient target (dni: regress on it)."""
        if self.mode == "backprop":
            h_in, out = self.pending.pop(step)
            self._update(step, out, grad, h_in)
            return {}
        if not self.sg_trainable:
            return {}
        h, labels = self.pending.pop(step)
        self._set_lr(self.sg_optimizer, self.sg_base_lr, step)
        self.sg_optimizer.zero_grad(set_to_none=True)
        loss = self.sg.regression_loss(h, labels, grad)
        loss.backward()
        self.sg_optimizer.step()
        return {"sg_loss": loss.item()}

    def evaluate(self, batch: int, h_in: torch.Tensor, labels: torch.Tensor) -> dict:
        """Inference with running BatchNorm statistics; the last stage scores the batch."""
        self.module.eval()
        with torch.no_grad():
            out = self.module(h_in)
        self.module.train()
        if not self.is_last:
            self.send(Message("eval", batch, out, labels))
            return {}
        loss = F.cross_entropy(out, labels, reduction="sum").item()
        return {"loss_sum": loss, "correct": (out.argmax(1) == labels).sum().item(), "count": len(labels)}

    # -- internals -----------------------------------------------------------------------------
    def _set_lr(self, optimizer: torch.optim.Optimizer, base: float, step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(base, self.lr_schedule, step, self.total_steps)

    def _update(self, step: int, out: torch.Tensor, grad_out: torch.Tensor | None, h_in: torch.Tensor) -> None:
        """Backpropagate `grad_out` (or the scalar loss `out`) through the block, step, send dL/dh_in up."""
        self._set_lr(self.optimizer, self.lr, step)
        self.optimizer.zero_grad(set_to_none=True)
        out.backward(grad_out)
        self.optimizer.step()
        self.updates += 1
        if self.index > 0:
            self.send(Message("backward", step, h_in.grad))
