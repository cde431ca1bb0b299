"""Synthetic-gradient models M(h[, y]) that predict dL/dh for a stage's output h (Jaderberg et al. 2016).

Convention: every gradient that travels between stages is the gradient of the *batch-mean* loss, so it
shrinks like 1/B. The model itself works at per-example scale (B times that gradient), where targets are
O(1) and regression is well conditioned; `predict` and `fit` convert at the boundary.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SyntheticGradient"]


def _zero_(layer: nn.Module) -> nn.Module:
    """Zero final layer: the predicted gradient starts at exactly 0 (the paper's initialisation)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class SyntheticGradient(nn.Module):
    """An MLP (flat h) or a 5x5 conv net (image h) with `hidden` widths; no hidden layer means linear.

    With `num_classes` set the model is conditioned on the label (cDNI): the one-hot label is appended
    to a flat input or broadcast as extra channels of an image input.
    """

    def __init__(self, shape: tuple[int, ...], hidden: list[int], num_classes: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        extra = num_classes or 0
        layers: list[nn.Module] = []
        if len(shape) == 1:
            width = shape[0] + extra
            for units in hidden:
                layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU()]
                width = units
            layers.append(_zero_(nn.Linear(width, shape[0])))
        else:
            channels = shape[0] + extra
            for units in hidden:
                layers += [nn.Conv2d(channels, units, 5, padding=2), nn.BatchNorm2d(units), nn.ReLU()]
                channels = units
            layers.append(_zero_(nn.Conv2d(channels, shape[0], 5, padding=2)))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-example gradient estimate, same shape as h."""
        if self.num_classes:
            onehot = F.one_hot(labels, self.num_classes).to(h.dtype)
            if h.dim() > 2:
                onehot = onehot[:, :, None, None].expand(-1, -1, *h.shape[2:])
            h = torch.cat([h, onehot], dim=1)
        return self.net(h)

    def predict(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Estimate of d(mean loss)/dh for the batch, with no graph back into the model."""
        with torch.no_grad():
            return self(h, labels) / h.shape[0]

    def regression_loss(self, h: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE towards a target gradient of the batch-mean loss, compared at per-example scale."""
        return F.mse_loss(self(h, labels), target * h.shape[0])
