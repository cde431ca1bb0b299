"""Emulated devices: stand-ins for K separate devices on one machine, whose compute is a wait.

Every block, synthetic-gradient model and auxiliary head here waits a stated time per call
(`time.sleep`, which holds no core) instead of computing, and passes on tensors of the real shapes,
so everything else about a run is real: the stage actors or torch processes, the messages and their
sizes, the schedules, the driver and the link latency. That lets one small machine show what K = 16
stages on 16 devices would do, as far as the host can carry their messages (the bench reports the
host's CPU load beside each run).

Durations are milliseconds for a whole mini-batch of `batch_size` samples. A call on fewer rows (a
micro-batch) waits `fixed_share` of that whatever its rows, and the rest in proportion to its rows:
a device's time per call has a part that does not shrink with the batch (kernel launches, reading the
weights, the optimizer step folded into the backward), 0.09-0.15 for the bench MLP at M = 4 as
measured. A block's backward is split into the input gradient (`input_grad_share` of it) and the
weight gradient, each waited by the autograd pass that computes it, so a schedule that separates them
(zero bubble) sees two calls; a block whose input needs no gradient (the first stage's) waits the
whole backward for its weights, so `backward_ms` is always what that stage's backward takes as it
runs (with its optimizer step: the emulated weight is one number, whose step costs nothing). Waits
happen in training mode only: evaluation is not what is emulated, and is outside the bench's timing.

Given one value, every stage waits the same whatever K (weak scaling: as if each extra device held
one more block of the same cost); the values are what a user measured for a stage of their own
model, or what `benchmarks/emulated-devices/emulated_devices.py measure` measures for the bench's MLP.
"""

import functools
import time

import torch
from torch import nn

__all__ = ["EmulatedBlock", "EmulatedSyntheticGradient", "emulated"]


class _WaitInBackward(torch.autograd.Function):
    """The identity forward; its backward waits `seconds` and passes the gradient through."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        time.sleep(ctx.seconds)
        return grad, None


class EmulatedBlock(nn.Module):
    """A block that waits `forward_ms` (its rows' share of it) and returns zeros of
    per-sample `out_shape` that depend on its input and on one weight, so autograd sends a real-sized
    gradient back and Adam has a weight to step; its backward waits `backward_ms` in two parts."""

    def __init__(self, out_shape: tuple[int, ...], forward_ms: float, backward_ms: float, batch_size: int,
                 input_grad_share: float = 0.5, fixed_share: float = 0.0):
        super().__init__()
        self.out_shape, self.batch_size, self.fixed_share = tuple(out_shape), batch_size, fixed_share
        self.forward_s = forward_ms / 1000
        self.input_grad_s = backward_ms * input_grad_share / 1000
        self.weight_grad_s = backward_ms * (1 - input_grad_share) / 1000
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        share = self.fixed_share + (1 - self.fixed_share) * x.shape[0] / self.batch_size if self.training else 0.0
        time.sleep(self.forward_s * share)
        out = x.new_zeros((x.shape[0], *self.out_shape), dtype=torch.float32)
        if not x.requires_grad:  # no input gradient to compute: the whole backward is the weights'
            return out + _WaitInBackward.apply(self.weight, (self.input_grad_s + self.weight_grad_s) * share)
        anchor = _WaitInBackward.apply(x.flatten(1)[:, :1], self.input_grad_s * share)
        out = out + anchor.reshape(-1, *[1] * len(self.out_shape)) * 0
        return out + _WaitInBackward.apply(self.weight, self.weight_grad_s * share)


class EmulatedSyntheticGradient(nn.Module):
    """An SG model called as ``module(h, labels)`` (what a stage takes from a user's factory): each call
    waits `forward_ms`, the backward of its regression waits `backward_ms`; it predicts zero."""

    def __init__(self, shape: tuple[int, ...], num_classes: int | None, *, forward_ms: float, backward_ms: float,
                 batch_size: int):
        super().__init__()
        self.block = EmulatedBlock(shape, forward_ms, backward_ms, batch_size, input_grad_share=0.0)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.block(h.detach())


def _aux_head(shape: tuple[int, ...], num_classes: int, *, forward_ms: float, backward_ms: float,
              batch_size: int) -> EmulatedBlock:
    """DGL's auxiliary classifier on a stage's output: logits per sample, or per position of a sequence."""
    return EmulatedBlock(_logits_shape(shape, num_classes), forward_ms, backward_ms, batch_size)


def _logits_shape(shape: tuple[int, ...], num_classes: int) -> tuple[int, ...]:
    return (*shape[:-1], num_classes) if len(shape) == 2 else (num_classes,)


def _milliseconds(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} is a number of milliseconds, 0 or more (got {value!r})")
    return float(value)


def _per_stage(value: float | list[float], num_stages: int, name: str) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * num_stages
    if len(values) != num_stages:
        raise ValueError(f"{name} needs one value, or one per stage ({num_stages}), got {value}")
    return [_milliseconds(v, name) for v in values]


def emulated(num_classes: int, num_stages: int, batch_size: int, *, shape: list[int] = (1024,),
             forward_ms: float | list[float] = 20.0, backward_ms: float | list[float] = 40.0,
             sg_forward_ms: float = 5.0, sg_backward_ms: float = 5.0, aux_forward_ms: float = 1.0,
             aux_backward_ms: float = 1.0, input_grad_share: float = 0.5, fixed_share: float = 0.0) -> nn.Sequential:
    """K stages of emulated blocks passing activations of per-sample `shape`, the last emitting logits
    (per position for a sequence shape (T, D)). Each stage is two half-blocks, so PyTorch's zero-bubble
    peer can cut the model into 2K stages; `forward_ms` and `backward_ms` are per stage (one value, or
    a list of one per stage). The returned model carries the matching SG and auxiliary-head factories."""
    forwards = _per_stage(forward_ms, num_stages, "forward_ms")
    backwards = _per_stage(backward_ms, num_stages, "backward_ms")
    for name, value in (("sg_forward_ms", sg_forward_ms), ("sg_backward_ms", sg_backward_ms),
                        ("aux_forward_ms", aux_forward_ms), ("aux_backward_ms", aux_backward_ms)):
        _milliseconds(value, name)
    for name, share in (("input_grad_share", input_grad_share), ("fixed_share", fixed_share)):
        if not 0 <= share <= 1:
            raise ValueError(f"{name} is a share of a call's time, in [0, 1] (got {share})")
    children = []
    for k, (f, b) in enumerate(zip(forwards, backwards)):
        out = _logits_shape(tuple(shape), num_classes) if k == num_stages - 1 else tuple(shape)
        children += [EmulatedBlock(tuple(shape), f / 2, b / 2, batch_size, input_grad_share, fixed_share),
                     EmulatedBlock(out, f / 2, b / 2, batch_size, input_grad_share, fixed_share)]
    model = nn.Sequential(*children)
    model.synthetic_gradient = functools.partial(EmulatedSyntheticGradient, forward_ms=sg_forward_ms,
                                                 backward_ms=sg_backward_ms, batch_size=batch_size)
    model.aux_head = functools.partial(_aux_head, forward_ms=aux_forward_ms, backward_ms=aux_backward_ms,
                                       batch_size=batch_size)
    return model
