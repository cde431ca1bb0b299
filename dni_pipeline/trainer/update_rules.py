"""How a stage turns a signal into a weight step: one small rule object per stage, no Ray here.

Every stage steps its block through a rule. A stage whose signal is exact (locked modes, `dgl`, the last
stage, an SG-off stage) has `ExactRule`: Adam on the gradient as it is. An SG-driven stage has the rule its
`sg_update` names:

- ``paper``: the raw prediction backpropagated into Adam, as Jaderberg et al. do.
- ``gated``: the same, with Adam's learning rate scaled by the measured trust in the step (`StepTrust`).
- ``calibrated``: the prediction scaled by its measured fit (`Calibration`), stepped with SGD and momentum.
- ``corrected``: the step the optimizer would take on the prediction's weight gradient, taken at once as an advance
  that leaves the optimizer's state as it was; when the true gradient of the batch comes back (at the weights the
  batch was computed with), the advance is taken back and the optimizer steps on the true gradient. With plain SGD
  that is a step on the true gradient less the prediction's; under any optimizer the two steps add up to the true
  gradient's own step, and the optimizer's state is fed the true gradients alone (the delayed mode's, in the order
  they come back). The SG only moves each update earlier, so it needs no trust to be safe. What goes upstream is
  the true gradient at the batch's input, computed when the true target arrives: every stage's correction and SG
  target are the true gradient (the delayed mode's), where the other rules send a gradient from their own SG.

The stage asks a rule five things: which optimizer to build, how far to scale the prediction it backpropagates
and the learning rate it steps at, how to take its step on the gradients it has (`step`), which batches to keep a
measurable copy of the weights for (`measures`), and what to do with the true weight gradient of such a batch when
its target comes back (`on_true_gradient`, which may step).
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
    sends_true_gradient = False  # the target sent upstream: the gradient from this stage's SG, or the true one

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

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The stage's step on the gradients its parameters hold."""
        optimizer.step()

    def kept(self, optimizer: torch.optim.Optimizer, module: torch.nn.Module, weights: dict) -> object:
        """What a measured batch keeps from its own step, beside its output and its copy of the weights."""
        return None

    def on_true_gradient(self, optimizer: torch.optim.Optimizer, params: list, kept: object,
                         true: list[torch.Tensor]) -> dict:
        """A measured batch's true weight gradient (one per parameter of `params`); its metrics."""
        return {}

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

    def on_true_gradient(self, optimizer, params, kept, true):
        return self.trust.update(kept, true)

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
    """Every batch is measured. Its step on the prediction is an advance, kept with the batch and taken back when the
    true weight gradient comes, which the optimizer then steps on."""

    name = "corrected"
    sends_true_gradient = True

    def __init__(self, config: StageConfig):
        super().__init__(config)
        self.advance: list[torch.Tensor] = []

    def measures(self, step: int) -> bool:
        return True

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's step, taken, and its state put back as it was: the state is the true gradients' alone."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
                 for p in params if p in optimizer.state}
        before = [p.detach().clone() for p in params]
        optimizer.step()
        self.advance = [p.detach() - b for p, b in zip(params, before)]
        for p in params:
            if p in saved:
                optimizer.state[p] = saved[p]
            else:
                optimizer.state.pop(p, None)

    def kept(self, optimizer, module, weights) -> list[torch.Tensor]:
        return self.advance

    def on_true_gradient(self, optimizer, params, kept, true):
        for param, gradient in zip(params, true):
            param.grad = gradient
        optimizer.step()
        with torch.no_grad():
            for param, moved in zip(params, kept):
                param.sub_(moved)
        return {}


SG_UPDATES = {"gated": GatedRule, "calibrated": CalibratedRule, "paper": PaperRule, "corrected": CorrectedRule}


def update_rule(config: StageConfig, sg_driven: bool) -> UpdateRule:
    """The rule of a stage: its `sg_update` where a synthetic gradient drives it, else the exact one."""
    return SG_UPDATES[config.sg_update](config) if sg_driven else ExactRule(config)
