"""How a stage turns a signal into a weight step: one small rule object per stage, no Ray here.

Every stage steps its block through a rule. A stage whose signal is exact (locked modes, `dgl`, the last
stage, an SG-off stage) has `ExactRule`: Adam on the gradient as it is. An SG-driven stage has the rule its
`sg_update` names:

- ``paper``: the raw prediction backpropagated into Adam, as Jaderberg et al. do.
- ``gated``: the same, with Adam's learning rate scaled by the measured trust in the step (`StepTrust`).
- ``calibrated``: the prediction scaled by its measured fit (`Calibration`), stepped with SGD and momentum.
- ``corrected``: the paper's step at once; then, when the true gradient of the batch comes back, a second step on
  the true weight gradient less the one the prediction gave (both at the weights the batch was computed with). With
  plain SGD the two steps add up to the true gradient's own step; with Adam the gradients fed to it add up to the
  true ones, but its moments weight each by when it came and each step is normalised on its own (docs/training.md).
  The SG only moves part of each update earlier, so it needs no trust to be safe.

The stage asks a rule four things: which optimizer to build, how far to scale the prediction it backpropagates
and the learning rate it steps at, which batches to keep a measurable copy of the weights for (`measures`),
and what to do with the true weight gradient of such a batch when its target comes back (`on_true_gradient`,
which may return a correction to step on).
"""

import torch

from .stage_config import StageConfig
from .synthetic_gradients import Calibration, StepTrust

__all__ = ["SG_UPDATES", "CalibratedRule", "CorrectedRule", "ExactRule", "GatedRule", "PaperRule", "UpdateRule",
           "adam_step_direction", "update_rule"]

SG_MOMENTUM = 0.9


def adam_step_direction(optimizer: torch.optim.Adam, params) -> list[torch.Tensor]:
    """The step Adam takes per unit of learning rate from its state now (bias-corrected first moment over
    the root of the second), parameter by parameter; zero for a parameter it has not stepped yet."""
    (beta1, beta2), eps = optimizer.param_groups[0]["betas"], optimizer.param_groups[0]["eps"]
    direction = []
    for param in params:
        state = optimizer.state.get(param)
        if not state:
            direction.append(torch.zeros_like(param))
            continue
        t = float(state["step"])
        direction.append(state["exp_avg"] / (1 - beta1**t) / ((state["exp_avg_sq"] / (1 - beta2**t)).sqrt() + eps))
    return direction


class UpdateRule:
    """The protocol, and the exact rule's behaviour: Adam at the stage's learning rate, nothing measured."""

    name = "exact"

    def __init__(self, config: StageConfig):
        self.config = config

    def optimizer(self, params: list) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.config.lr)

    @property
    def base_lr(self) -> float:
        return self.config.lr

    @property
    def lr_scale(self) -> float:
        """The share of the learning rate the stage steps at now."""
        return 1.0

    @property
    def prediction_scale(self) -> float:
        """What the SG's prediction is multiplied by before it is backpropagated into the block."""
        return 1.0

    def measures(self, step: int) -> bool:
        """Whether this batch's forward keeps a copy of the weights, so its true target can be turned into the
        true weight gradient when it comes back."""
        return False

    def kept(self, optimizer: torch.optim.Optimizer, module: torch.nn.Module, weights: dict) -> object:
        """What a measured batch keeps from its own step, beside its output and its copy of the weights."""
        return None

    def on_true_gradient(self, kept: object, true: list[torch.Tensor]) -> tuple[dict, list[torch.Tensor] | None]:
        """A measured batch's true weight gradient: its metrics, and a gradient to step on now (or None)."""
        return {}, None

    def on_target(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Every SG target, beside the prediction it was made for."""

    def step_metrics(self) -> dict:
        return {}

    def parts(self) -> dict:
        """The rule's state, by the checkpoint key it is saved under."""
        return {}


ExactRule = UpdateRule


class PaperRule(UpdateRule):
    name = "paper"

    def step_metrics(self) -> dict:
        return {"sg_scale": 1.0}


class GatedRule(UpdateRule):
    name = "gated"

    def __init__(self, config: StageConfig):
        super().__init__(config)
        self.trust = StepTrust(config.sg_trust_every)

    @property
    def lr_scale(self) -> float:
        return self.trust.scale

    def measures(self, step: int) -> bool:
        return step % self.config.sg_trust_every == 0

    def kept(self, optimizer, module, weights) -> list[torch.Tensor]:
        return adam_step_direction(optimizer, module.parameters())

    def on_true_gradient(self, kept, true):
        return self.trust.update(kept, true), None

    def step_metrics(self) -> dict:
        return {"sg_scale": self.trust.scale}

    def parts(self) -> dict:
        return {"trust": self.trust}


class CalibratedRule(UpdateRule):
    """An SG-driven stage under `calibrated` steps with SGD: its gradient's size carries the trust."""

    name = "calibrated"

    def __init__(self, config: StageConfig):
        super().__init__(config)
        self.calibration = Calibration()

    def optimizer(self, params: list) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.config.sg_update_lr, momentum=SG_MOMENTUM)

    @property
    def base_lr(self) -> float:
        return self.config.sg_update_lr

    @property
    def prediction_scale(self) -> float:
        return self.calibration.scale

    def on_target(self, predicted, target) -> None:
        self.calibration.update(predicted, target)

    def step_metrics(self) -> dict:
        return {"sg_scale": self.calibration.scale}

    def parts(self) -> dict:
        return {"calibration": self.calibration}


class CorrectedRule(PaperRule):
    """Every batch is measured: the gradient its prediction gave the weights is kept, and the true weight gradient,
    when it comes back, is stepped on less that one."""

    name = "corrected"

    def measures(self, step: int) -> bool:
        return True

    def kept(self, optimizer, module, weights) -> list[torch.Tensor]:
        return [weights[name].grad for name, _ in module.named_parameters()]

    def on_true_gradient(self, kept, true):
        return {}, [t if s is None else t - s for s, t in zip(kept, true)]


SG_UPDATES = {"gated": GatedRule, "calibrated": CalibratedRule, "paper": PaperRule, "corrected": CorrectedRule}


def update_rule(config: StageConfig, sg_driven: bool) -> UpdateRule:
    """The rule of a stage: its `sg_update` where a synthetic gradient drives it, else the exact one."""
    return SG_UPDATES[config.sg_update](config) if sg_driven else ExactRule(config)
