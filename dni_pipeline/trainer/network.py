"""A network described once as a string of layers, built from a seed and split into K stage modules.

Layer tokens, comma separated: ``fc256`` (Linear + BatchNorm1d + ReLU), ``conv128`` (5x5 same-padded
Conv2d + BatchNorm2d + ReLU), ``conv128p`` (the same followed by a 3x3 stride-2 max pool), and ``*N``
to repeat a token (``fc1024*4``). Presets name the paper's networks. A linear classifier head is
appended to the last stage, or is the last stage alone when there is one stage more than blocks.
"""

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from dni_pipeline.core.errors import UserError

__all__ = ["PRESETS", "LayerSpec", "arch_model", "arch_starts", "build_stages", "parse_arch", "stage_output_shapes"]

PRESETS = {
    "fcn3": "fc256*3",  # the paper's MNIST FCN, 3 hidden layers
    "fcn6": "fc256*6",
    "cnn3": "conv128p*3",  # the paper's 3-layer CNN (5x5 kernels, 128 channels)
}

_TOKEN = re.compile(r"^(fc|conv)(\d+)(p?)(?:\*(\d+))?$")


@dataclass(frozen=True)
class LayerSpec:
    kind: str  # "fc" or "conv"
    width: int  # units or channels
    pool: bool = False


def parse_arch(arch: str) -> list[LayerSpec]:
    """Parse a preset name or a layer string; the error shows a valid example."""
    text = PRESETS.get(arch, arch)
    layers: list[LayerSpec] = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        match = _TOKEN.match(token)
        if not match or int(match[2]) < 1 or (match[1] == "fc" and match[3]):
            raise UserError(
                f"bad layer '{token}' in --arch '{arch}': use a preset ({', '.join(PRESETS)}) "
                "or tokens like 'fc256,fc256' or 'conv64p*2,fc256'"
            )
        layers += [LayerSpec(match[1], int(match[2]), bool(match[3]))] * int(match[4] or 1)
    if not layers:
        raise UserError(f"--arch '{arch}' has no layers: give at least one, e.g. 'fc256'")
    if any(a.kind == "fc" and b.kind == "conv" for a, b in zip(layers, layers[1:])):
        raise UserError(f"--arch '{arch}' puts a conv layer after an fc layer: list conv layers first")
    return layers


def _output_shape(spec: LayerSpec, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.kind == "fc":
        return (spec.width,)
    if len(in_shape) != 3:
        raise UserError("a conv layer needs image input: use fc layers for flat datasets")
    _, height, width = in_shape
    if spec.pool:
        height, width = (height + 1) // 2, (width + 1) // 2
    return (spec.width, height, width)


def _block(spec: LayerSpec, in_shape: tuple[int, ...]) -> nn.Module:
    # No bias before BatchNorm: it would be cancelled by the mean subtraction, its true gradient is
    # zero, and Adam would turn the rounding noise in that gradient into steps of full size.
    if spec.kind == "fc":
        modules = [nn.Flatten()] if len(in_shape) > 1 else []
        modules += [nn.Linear(math.prod(in_shape), spec.width, bias=False), nn.BatchNorm1d(spec.width), nn.ReLU()]
    else:
        modules = [nn.Conv2d(in_shape[0], spec.width, 5, padding=2, bias=False), nn.BatchNorm2d(spec.width), nn.ReLU()]
        if spec.pool:
            modules.append(nn.MaxPool2d(3, stride=2, padding=1))
    return nn.Sequential(*modules)


def _shapes(layers: list[LayerSpec], input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Per-sample shape entering each layer, then the shape leaving the last one."""
    shapes = [tuple(input_shape)]
    for spec in layers:
        shapes.append(_output_shape(spec, shapes[-1]))
    return shapes


def _split_points(num_layers: int, num_stages: int) -> list[int]:
    """Contiguous, balanced: the first ``num_layers % num_stages`` stages take one layer more."""
    base, extra = divmod(num_layers, num_stages)
    points, start = [], 0
    for i in range(num_stages):
        start += base + (i < extra)
        points.append(start)
    return points


def arch_model(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """The built-in model of `--arch`: its blocks and then the linear classifier head, as one Sequential
    (build it under the seed: every process that builds it gets the same weights)."""
    return _model(parse_arch(arch), tuple(input_shape), num_classes)


def _model(layers: list[LayerSpec], input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    shapes = _shapes(layers, input_shape)
    blocks = [_block(spec, shape) for spec, shape in zip(layers, shapes)]
    head = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shapes[-1]), num_classes))
    return nn.Sequential(*blocks, head)


def arch_starts(arch: str, num_stages: int) -> list[int]:
    """Where `--arch`'s stages begin (see `_starts`)."""
    return _starts(len(parse_arch(arch)), num_stages)


def _starts(num_layers: int, num_stages: int) -> list[int]:
    """Stage starts: balanced by block count, the head with the last block; with one stage more than
    blocks, every block on its own and the head on the last (every hidden layer decoupled, as in the paper)."""
    if num_stages == num_layers + 1:
        return list(range(1, num_layers + 1))
    return _split_points(num_layers, num_stages)[:-1]


def build_stages(
    layers: list[LayerSpec], input_shape: tuple[int, ...], num_classes: int, num_stages: int, seed: int
) -> list[nn.Sequential]:
    """Build the whole network from ``seed`` (so every process builds identical weights) and split it.

    Stage k holds a contiguous run of hidden blocks; the last stage also holds the classifier head, or
    only the head when there is one stage more than blocks.
    """
    if not 1 <= num_stages <= len(layers) + 1:
        raise UserError(
            f"--stages {num_stages} does not fit {len(layers)} hidden layers and the head: "
            f"use 1..{len(layers) + 1} stages or add layers to --arch"
        )
    torch.manual_seed(seed)
    children = list(_model(layers, tuple(input_shape), num_classes))
    bounds = [0, *_starts(len(layers), num_stages), len(children)]
    return [nn.Sequential(*children[a:b]) for a, b in zip(bounds, bounds[1:])]


def stage_output_shapes(layers: list[LayerSpec], input_shape: tuple[int, ...], num_stages: int) -> list[tuple]:
    """Per-sample output shape of every stage but the last (the shapes the synthetic gradients predict)."""
    shapes = _shapes(layers, input_shape)
    return [shapes[stop] for stop in _starts(len(layers), num_stages)]
