"""What a network is trained for and scored on: the loss, and the metrics reported beside it.

The default is cross-entropy over the last dimension, so it serves classifiers (output (B, C), labels
(B,)) and language models alike (output (B, T, V), labels (B, T): the mean over every position), with
accuracy, and bits per token for sequence outputs. A user's own loss and metrics are callables
``fn(output, target)`` returning the batch mean; they must be picklable, since every stage process and
peer holds a copy.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["Objective", "scores_to_metrics"]


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every sample (and every position of a sequence output)."""
    return F.cross_entropy(output.flatten(0, -2), target.flatten())


@dataclass
class Objective:
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # None: cross-entropy
    metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = field(default_factory=dict)

    @property
    def classifies(self) -> bool:
        """Labels are class indices (the default loss): accuracy is scored and cDNI can condition on them."""
        return self.loss_fn is None

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(output, target) if self.loss_fn is None else self.loss_fn(output, target)

    def scores(self, output: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None) -> dict:
        """Sums over the batch (batch means times its size), so batches of any size add up exactly."""
        count = len(target)
        loss = self.loss(output, target) if loss is None else loss
        sums = {"count": count, "loss_sum": float(loss) * count}
        if self.classifies:
            sums["correct"] = float((output.argmax(-1) == target).float().mean()) * count
            sums["sequence"] = output.dim() == 3
        for name, fn in self.metrics.items():
            sums[f"{name}_sum"] = float(fn(output, target)) * count
        return sums


def scores_to_metrics(scored: list[dict], prefix: str) -> dict:
    """Per-batch sums -> means over every sample: `{prefix}loss`, `{prefix}accuracy`, `{prefix}bits`
    (bits per token, for sequence outputs) and each user metric."""
    count = sum(s["count"] for s in scored)
    totals = {k: sum(s[k] for s in scored) for k in scored[0] if k.endswith("_sum")}
    metrics = {f"{prefix}{k.removesuffix('_sum')}": v / count for k, v in totals.items()}
    if "correct" in scored[0]:
        metrics[f"{prefix}accuracy"] = sum(s["correct"] for s in scored) / count
        if scored[0]["sequence"]:
            metrics[f"{prefix}bits"] = metrics[f"{prefix}loss"] / math.log(2)
    return metrics
