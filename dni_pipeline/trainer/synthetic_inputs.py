"""Synthetic-input models I(x) that predict a stage's input h_{i-1} from the batch's data x: the forward
unlock of Jaderberg et al. (2016), with which a stage computes, and updates from its synthetic gradient,
without waiting for the stages before it. Each is trained by regression to the real h_{i-1} of the same
batch when that arrives.

Defaults by the shape of the activation they predict: a flat h (D,) from an MLP on the flattened data
(two hidden layers as wide as h, with BatchNorm and ReLU); an image h (C, H, W) from image data by
average-pooling it to H x W and two 5x5 conv layers of C channels. Other pairs (token ids, sequences)
have none yet: a user's factory ``fn(x_shape, h_shape)`` serves any (`UserSyntheticInput`).
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SyntheticInput", "SyntheticInputModel", "UserSyntheticInput", "default_input_hidden"]


def default_input_hidden(shape: tuple[int, ...]) -> list[int]:
    """Two hidden layers as wide as the activation (its features, or its channels): about one block's cost."""
    width = shape[0]
    return [width, width]


class SyntheticInputModel(nn.Module):
    """What a stage asks of its input model: ``forward(x)`` gives h's estimate for the batch."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self(x)

    def regression_loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(x), target)


class UserSyntheticInput(SyntheticInputModel):
    """A user's own input model, called as ``module(x)`` on the batch's data and returning h's estimate."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class SyntheticInput(SyntheticInputModel):
    """The default input model for data of per-sample shape `x_shape` and an activation of `h_shape`."""

    def __init__(self, x_shape: tuple[int, ...], h_shape: tuple[int, ...], hidden: list[int], x_dtype=torch.float32):
        super().__init__()
        if not x_dtype.is_floating_point:
            raise ValueError(f"there is no synthetic-input model for {x_dtype} data (token ids?)")
        layers: list[nn.Module] = []
        if len(h_shape) == 1:
            width = 1
            for size in x_shape:
                width *= size
            layers.append(nn.Flatten())
            for units in hidden:
                layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU()]
                width = units
            layers.append(nn.Linear(width, h_shape[0]))
        elif len(h_shape) == 3 and len(x_shape) == 3:
            channels = x_shape[0]
            layers.append(nn.AdaptiveAvgPool2d(h_shape[1:]))
            for units in hidden:
                layers += [nn.Conv2d(channels, units, 5, padding=2), nn.BatchNorm2d(units), nn.ReLU()]
                channels = units
            layers.append(nn.Conv2d(channels, h_shape[0], 5, padding=2))
        else:
            raise ValueError(f"there is no synthetic-input model from data of shape {x_shape} to activations of shape "
                             f"{h_shape} (flat activations, and images from images, have one)")
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
