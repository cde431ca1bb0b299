"""A network as K stage modules, from what a PyTorch user already has:

- a list of modules, one per stage (their weights are the user's);
- an ``nn.Sequential`` and where to cut it: explicit indices (the first child of every stage after the
  first), or balanced by parameter count;
- a picklable factory ``build_stage(index, num_stages)``, called on the process that holds the stage,
  for models too large to build in one place (each stage's weights come from the seed and its index).

`Network` carries that, the objective (loss and metrics) and optional factories for the synthetic-gradient
models and auxiliary heads; it is pickled to every stage actor and peer. `Network.probe` runs one forward
of a sample batch through the stages, one at a time, to find the activation shape at every boundary
(flat (B, D), images (B, C, H, W), sequences (B, T, D), or anything a user's factory serves) and to turn a
model that cannot run into one line that names the stage.
"""

import copy
from collections.abc import Callable

import numpy as np
import ray.cloudpickle
import torch
from torch import nn

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.imports import send_by_value, user_code_modules

from .data import PlacedData, check_labels
from .objective import Objective
from .synthetic_gradients import SyntheticGradient, UserSyntheticGradient
from .synthetic_inputs import SyntheticInput, UserSyntheticInput

__all__ = ["Network", "as_network", "balanced_starts", "stage_seed"]



def stage_seed(seed: int, index: int) -> int:
    """The seed a factory builds stage `index` from: distinct per stage, the same on every process."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def balanced_starts(sizes: list[int], num_stages: int) -> list[int]:
    """The first child of every stage after the first, cutting `sizes` (parameters per child) into
    contiguous runs whose largest total is as small as it can be (ties: the earlier cut)."""
    n = len(sizes)
    prefix = np.concatenate([[0], np.cumsum(sizes)])
    # cost[k][i]: the best largest stage over the first i children in k stages; where[k][i]: its last cut
    cost = np.full((num_stages + 1, n + 1), np.inf)
    where = np.zeros((num_stages + 1, n + 1), dtype=int)
    cost[0][0] = 0
    for k in range(1, num_stages + 1):
        for i in range(k, n + 1):
            for p in range(k - 1, i):
                value = max(cost[k - 1][p], prefix[i] - prefix[p])
                if value < cost[k][i]:
                    cost[k][i], where[k][i] = value, p
    starts, i = [], n
    for k in range(num_stages, 1, -1):
        i = where[k][i]
        starts.append(int(i))
    return starts[::-1]


class Network:
    """How every process builds the stages of one model, and what they train for."""

    def __init__(self, num_stages: int, *, modules: list[nn.Module] | None = None,
                 factory: Callable[[int, int], nn.Module] | None = None, starts: list[int] | None = None,
                 seed: int = 0, objective: Objective | None = None,
                 synthetic_gradient: Callable | None = None, aux_head: Callable | None = None,
                 synthetic_input: Callable | None = None):
        self.num_stages, self.modules, self.factory, self.seed = num_stages, modules, factory, seed
        self.starts = starts  # a cut Sequential: index of each stage's first child, for the whole state dict
        self.objective = objective or Objective()
        self.synthetic_gradient, self.aux_head, self.synthetic_input = synthetic_gradient, aux_head, synthetic_input
        self.boundaries: list[tuple[tuple, torch.dtype]] | None = None  # per-sample (shape, dtype): input, each output
        self.label_shape: tuple | None = None  # per-sample shape of the labels: () one per sample, (T,) per position

    def build(self, index: int) -> nn.Module:
        if self.factory is None:
            return self.modules[index]
        torch.manual_seed(stage_seed(self.seed, index))
        return self.factory(index, self.num_stages)

    def build_all(self) -> list[nn.Module]:
        return [self.build(i) for i in range(self.num_stages)]

    def for_stage(self, *indices: int) -> "Network":
        """A copy that holds only the modules of the stages given: what the actor running them is sent."""
        part = copy.copy(self)
        if self.modules is not None:
            part.modules = [m if i in indices else None for i, m in enumerate(self.modules)]
        return part

    def recut(self, num_stages: int) -> "Network":
        """The same model cut into `num_stages` stages balanced by parameter count, for a schedule that
        holds several stages per process. Only a cut nn.Sequential has the cut points to move."""
        if self.starts is None:
            raise UserError(f"the model cannot be cut into {num_stages} stages: it was given as stage modules or a "
                            "factory; give it as one nn.Sequential")
        children = [child for module in self.modules for child in module]
        return as_network(nn.Sequential(*children), num_stages, seed=self.seed, objective=self.objective,
                          synthetic_gradient=self.synthetic_gradient, aux_head=self.aux_head,
                          synthetic_input=self.synthetic_input)

    @property
    def num_classes(self) -> int | None:
        """Classes of a classifier (the last output's last dimension); None for a user's own loss."""
        return self.boundaries[-1][0][-1] if self.objective.classifies else None

    def output_shape(self, index: int) -> tuple:
        return self.boundaries[index + 1][0]

    def input_shape(self, index: int) -> tuple:
        return self.boundaries[index][0]

    def whole_state_dict(self, stage_states: list[dict]) -> dict:
        """The stages' state dicts as one that loads into the whole model: the cut Sequential, or
        ``nn.Sequential(*stages)`` for a list or factory."""
        merged = {}
        for k, state in enumerate(stage_states):
            for key, value in state.items():
                if self.starts is None:
                    merged[f"{k}.{key}"] = value
                else:
                    child, _, rest = key.partition(".")
                    merged[f"{([0] + self.starts)[k] + int(child)}.{rest}"] = value
        return merged

    # -- checks, all before any actor or run folder exists ----------------------------------------------
    def probe(self, sample: torch.Tensor) -> list[torch.Tensor]:
        """One forward of `sample` through every stage in turn (eval mode, no gradient, so no BatchNorm
        statistic moves); records the boundary shapes and returns each stage's output."""
        outputs, h = [], sample
        for i in range(self.num_stages):
            try:
                module = self.build(i)
            except Exception as exc:
                raise UserError(f"building stage {i} failed ({type(exc).__name__}: {exc}): fix the model "
                                "factory") from None
            if not isinstance(module, nn.Module):
                raise UserError(f"stage {i} is a {type(module).__name__}, not an nn.Module: the factory must "
                                "return a module")
            training = module.training
            module.eval()
            try:
                with torch.no_grad():
                    h = module(h)
            except Exception as exc:
                source = "the data" if i == 0 else f"stage {i - 1}'s output"
                raise UserError(f"stage {i} cannot take {source} of shape {tuple(h.shape)} ({type(exc).__name__}: "
                                f"{_first_line(exc)}): make each stage's input fit the one before it, or "
                                "cut the model elsewhere") from None
            finally:
                module.train(training)
            if not isinstance(h, torch.Tensor):
                raise UserError(f"stage {i} returned a {type(h).__name__}: a stage must return one tensor")
            outputs.append(h)
        self.boundaries = [(tuple(t.shape[1:]), t.dtype) for t in [sample, *outputs]]
        return outputs

    def prepare(self, data: PlacedData, mode: str, synthetic_inputs: bool = False) -> None:
        """Check that the model runs on the data and pickles (once: probing records the boundaries), and
        that `mode` (with its input models) can run on it."""
        if self.boundaries is None:
            outputs = self.probe(torch.tensor(data.sample_x))
            if self.objective.classifies:
                check_labels(outputs[-1], data.sample_y, data.label_range)
            self.label_shape = tuple(data.sample_y.shape[1:])
            self.check_picklable()
        if self.objective.classifies and (mode == "cdni" and self.synthetic_gradient is None
                                          or mode == "dgl" and self.aux_head is None):
            self._check_labels_per_stage(mode)
        if mode == "cdni" and self.synthetic_gradient is None and not self.objective.classifies:
            raise UserError("cdni conditions its SG models on class labels, and a custom loss has none: use dni, "
                            "or give a synthetic_gradient factory")
        for index in range(1, self.num_stages) if synthetic_inputs else ():
            try:
                self.build_synthetic_input(index, [])
            except ValueError as exc:
                raise UserError(f"--synthetic-inputs for stage {index}: {exc}; or run without --synthetic-inputs") from None
        if mode == "dgl" and self.aux_head is None and not self.objective.classifies:
            raise UserError("dgl's default auxiliary head is a classifier, and a custom loss has no classes: give an "
                            "aux_head factory")

    def _check_labels_per_stage(self, mode: str) -> None:
        """cdni conditions, and dgl scores, each stage's output on the labels: one label per sample serves any
        output (a sequence's every position), one per position only a sequence output of as many positions."""
        for index in range(self.num_stages - 1):
            shape = self.output_shape(index)
            if self.label_shape != () and not (len(shape) == 2 and self.label_shape == shape[:1]):
                raise UserError(f"{mode}: stage {index}'s output of per-sample shape {shape} cannot take labels of "
                                f"per-sample shape {self.label_shape} (one per sample, or one per position of a (T, D) "
                                f"output): cut the model elsewhere, or give your own "
                                f"{'synthetic_gradient' if mode == 'cdni' else 'aux_head'} factory")

    def check_picklable(self) -> None:
        """Every stage process gets a pickled copy: refuse one that cannot be, before anything starts. The
        user's own modules (files beside their script) travel by value, so no worker needs them on its path."""
        send_by_value(user_code_modules([self.modules, self.factory, self.objective.loss_fn,
                                         *self.objective.metrics.values(), self.synthetic_gradient, self.aux_head,
                                         self.synthetic_input]))
        try:
            ray.cloudpickle.dumps(self)
        except Exception as exc:
            raise UserError(f"the model cannot be pickled for the stage processes ({type(exc).__name__}: "
                            f"{_first_line(exc)}): keep open files, locks and threads out of the "
                            "modules and factories") from None

    # -- the local models of a stage ----------------------------------------------------------------------
    def build_synthetic_gradient(self, index: int, hidden: list[int], conditioned: bool) -> nn.Module:
        """Stage `index`'s SG model: the user's factory ``fn(shape, num_classes)`` (num_classes None for
        dni) or the default for the activation's shape."""
        shape, classes = self.output_shape(index), self.num_classes if conditioned else None
        if self.synthetic_gradient is not None:
            return UserSyntheticGradient(self.synthetic_gradient(shape, classes))
        return SyntheticGradient(shape, hidden, classes)

    def build_synthetic_input(self, index: int, hidden: list[int]) -> nn.Module:
        """Stage `index`'s input model: the user's factory ``fn(x_shape, h_shape)`` (per-sample shapes of the data
        and of the stage's input), or the default for those shapes."""
        (x_shape, x_dtype), (h_shape, _) = self.boundaries[0], self.boundaries[index]
        if self.synthetic_input is not None:
            return UserSyntheticInput(self.synthetic_input(x_shape, h_shape))
        return SyntheticInput(x_shape, h_shape, hidden, x_dtype)

    def build_aux_head(self, index: int, hidden: list[int]) -> nn.Module:
        """DGL's auxiliary head on stage `index`'s output: the user's factory ``fn(shape, num_classes)``,
        or a classifier made for the shape."""
        shape = self.output_shape(index)
        if self.aux_head is not None:
            return self.aux_head(shape, self.num_classes)
        return default_aux_head(shape, self.num_classes, hidden, per_position=self.label_shape != ())


def _first_line(exc: Exception) -> str:
    """An error's message on one line (the error lines of this module are one line each)."""
    return next(iter(str(exc).splitlines()), "")


class MeanOverPositions(nn.Module):
    """(B, T, D) -> (B, D): a sequence's one summary, for a head that gives one prediction per sequence."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mean(1)


def default_aux_head(shape: tuple[int, ...], num_classes: int, hidden: list[int],
                     per_position: bool = True) -> nn.Sequential:
    """An MLP (linear without `hidden`) on a flat output or on each position of a sequence (averaged over the
    positions first where the labels are one per sequence, `per_position` False); image outputs are first
    average-pooled to 2x2 so the head stays small next to the block."""
    modules: list[nn.Module] = []
    if len(shape) == 2 and not per_position:
        modules.append(MeanOverPositions())
        shape = shape[1:]
    if len(shape) == 3:
        modules.append(nn.AdaptiveAvgPool2d(2))
        shape = (shape[0], min(shape[1], 2), min(shape[2], 2))
    if len(shape) != 2:
        modules.append(nn.Flatten())
    width = shape[-1] if len(shape) == 2 else int(np.prod(shape))
    for units in hidden:
        modules += [nn.Linear(width, units), nn.ReLU()]
        width = units
    modules.append(nn.Linear(width, num_classes))
    return nn.Sequential(*modules)


def as_network(model, num_stages: int, *, split: list[int] | None = None, seed: int = 0,
               objective: Objective | None = None, synthetic_gradient: Callable | None = None,
               aux_head: Callable | None = None, synthetic_input: Callable | None = None) -> Network:
    """The user's model (a list of stage modules, an nn.Sequential with an optional `split`, or a
    factory) as a `Network` of `num_stages` stages."""
    if num_stages < 1:
        raise UserError(f"stages must be at least 1 (got {num_stages})")
    common = {"seed": seed, "objective": objective, "synthetic_gradient": synthetic_gradient, "aux_head": aux_head,
              "synthetic_input": synthetic_input}
    if isinstance(model, nn.Sequential):
        children = list(model)
        if num_stages > len(children):
            raise UserError(f"{num_stages} stages do not fit an nn.Sequential of {len(children)} children: it has "
                            f"{len(children) - 1} cut points, so use at most {len(children)} stages")
        starts = _checked_split(split, num_stages, len(children)) if split is not None else balanced_starts(
            [sum(p.numel() for p in child.parameters()) for child in children], num_stages)
        bounds = [0, *starts, len(children)]
        modules = [nn.Sequential(*children[a:b]) for a, b in zip(bounds, bounds[1:])]
        return Network(num_stages, modules=modules, starts=starts, **common)
    if split is not None:
        raise UserError("a split cuts an nn.Sequential: drop it, or pass the model as one nn.Sequential")
    if isinstance(model, (list, tuple, nn.ModuleList)):
        modules = list(model)
        if len(modules) != num_stages:
            raise UserError(f"{len(modules)} stage modules given for {num_stages} stages: give one module per "
                            "stage, or an nn.Sequential to cut")
        if not all(isinstance(m, nn.Module) for m in modules):
            raise UserError("every stage of the list must be an nn.Module")
        return Network(num_stages, modules=modules, **common)
    if callable(model) and not isinstance(model, nn.Module):
        return Network(num_stages, factory=model, **common)
    raise UserError(f"a model of type {type(model).__name__} cannot be split: give a list of stage modules, an "
                    "nn.Sequential, or a factory build_stage(index, num_stages)")


def _checked_split(split: list[int], num_stages: int, num_children: int) -> list[int]:
    starts = list(split)
    if len(starts) != num_stages - 1 or starts != sorted(set(starts)) or not all(0 < s < num_children for s in starts):
        raise UserError(f"split {split} does not cut {num_children} children into {num_stages} stages: give "
                        f"{num_stages - 1} increasing indices between 1 and {num_children - 1} (each stage's first child)")
    return starts
