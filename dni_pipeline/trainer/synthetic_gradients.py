"""Synthetic-gradient models M(h[, y]) that predict dL/dh for a stage's output h (Jaderberg et al. 2016).

Convention: every gradient that travels between stages is the gradient of the *batch-mean* loss, so it
shrinks like 1/B (1/(B T) for a sequence, whose loss is the mean over positions). The model itself works
at per-term scale (that gradient times the number of loss terms), where targets are O(1) and regression
is well conditioned; `predict` and `regression_loss` convert at the boundary.

Activations come in three shapes, told by the per-sample shape: flat (D,), images (C, H, W) and
sequences (T, D). A sequence is served per position: the same MLP over D at every position (as a
transformer's own MLP is), so the model's size does not grow with the context.
"""



import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Calibration", "StepTrust", "SyntheticGradient", "SyntheticGradientModel", "UserSyntheticGradient", "loss_terms"]


def _zero_(layer: nn.Module) -> nn.Module:
    """Zero final layer: the predicted gradient starts at exactly 0 (the paper's initialisation)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def loss_terms(h: torch.Tensor) -> int:
    """How many loss terms the batch-mean loss averages over: samples, or samples x positions."""
    return h.shape[0] * h.shape[1] if h.dim() == 3 else h.shape[0]


class SyntheticGradientModel(nn.Module):
    """What a stage asks of its SG model: ``forward(h, labels)`` gives the per-term gradient estimate."""

    def predict(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Estimate of d(mean loss)/dh for the batch, with no graph back into the model."""
        with torch.no_grad():
            return self(h, labels) / loss_terms(h)

    def regression_loss(self, h: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE towards a target gradient of the batch-mean loss, compared at per-term scale."""
        return F.mse_loss(self(h, labels), target * loss_terms(h))


class UserSyntheticGradient(SyntheticGradientModel):
    """A user's own SG module, called as ``module(h, labels)``; it should start at zero output (the paper's
    initialisation), so an untrained model drives no update."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.module(h, labels)


class SyntheticGradient(SyntheticGradientModel):
    """An MLP (flat h, and each position of a sequence h) or a 5x5 conv net (image h) with `hidden`
    widths; no hidden layer means linear.

    With `num_classes` set the model is conditioned on the label (cDNI): the one-hot label is appended
    to a flat input, broadcast as extra channels of an image input, and for a sequence appended at each
    position (the target token of that position, for a language model; the sequence's one label, for a
    sequence classifier).
    """

    def __init__(self, shape: tuple[int, ...], hidden: list[int], num_classes: int | None = None):
        super().__init__()
        if len(shape) not in (1, 2, 3):
            raise ValueError(f"no synthetic-gradient model for activations of per-sample shape {shape}: "
                             "give one of your own (flat (D,), sequences (T, D) and images (C, H, W) have defaults)")
        self.num_classes = num_classes
        extra = num_classes or 0
        layers: list[nn.Module] = []
        if len(shape) in (1, 2):
            width = shape[-1] + extra
            for units in hidden:
                layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU()]
                width = units
            layers.append(_zero_(nn.Linear(width, shape[-1])))
        else:
            channels = shape[0] + extra
            for units in hidden:
                layers += [nn.Conv2d(channels, units, 5, padding=2), nn.BatchNorm2d(units), nn.ReLU()]
                channels = units
            layers.append(_zero_(nn.Conv2d(channels, shape[0], 5, padding=2)))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-term gradient estimate, same shape as h."""
        x = h
        if self.num_classes:
            onehot = F.one_hot(labels, self.num_classes).to(h.dtype)  # (B, C), or (B, T, C) for a sequence
            if h.dim() == 3 and labels.dim() == 1:  # one label per sequence conditions every position
                onehot = onehot[:, None, :].expand(-1, h.shape[1], -1)
            if h.dim() == 4:
                onehot = onehot[:, :, None, None].expand(-1, -1, *h.shape[2:])
            x = torch.cat([h, onehot], dim=1 if h.dim() == 4 else -1)
        if h.dim() == 3:  # every position of every sequence is one row of the MLP
            return self.net(x.flatten(0, 1)).view_as(h)
        return self.net(x)


class Calibration:
    """How far a stage steps along its synthetic gradient: a step as long as the prediction's measured
    projection on the true gradient, so the part of the prediction that is error adds direction but
    never length.

    From the targets g that later arrive for the same batches as the predictions g_hat (averaged over
    the last steps): the least-squares scale alpha = <g_hat, g> / |g_hat|^2 (clipped to [0, 1]) and the
    cosine rho = <g_hat, g> / (|g_hat| |g|) (clipped at 0). The stage backpropagates
    alpha * rho * g_hat, whose length is rho^2 |g|: the true gradient times the share of its energy the
    prediction explains (R^2 of the calibrated prediction). A model that has learned nothing yet drives
    no update, so the stage stays where the SG-off ablation would leave it instead of wandering.
    """

    DECAY = 0.9  # about the last ten targets: the SG and the network move on within tens of steps

    def __init__(self):
        self.cross = self.energy = self.target_energy = 0.0

    @property
    def scale(self) -> float:
        if self.cross <= 0 or self.energy <= 0 or self.target_energy <= 0:
            return 0.0
        alpha = min(1.0, self.cross / self.energy)
        return alpha * self.cross / (self.energy * self.target_energy) ** 0.5

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        averaged = lambda old, new: self.DECAY * old + (1 - self.DECAY) * float(new)  # noqa: E731
        self.cross = averaged(self.cross, (predicted * target).sum())
        self.energy = averaged(self.energy, predicted.pow(2).sum())
        self.target_energy = averaged(self.target_energy, target.pow(2).sum())

    def state_dict(self) -> dict:
        return {"cross": self.cross, "energy": self.energy, "target_energy": self.target_energy}

    def load_state_dict(self, state: dict) -> None:
        self.cross, self.energy, self.target_energy = state["cross"], state["energy"], state["target_energy"]


class StepTrust:
    """How far an SG-driven stage follows its prediction under the ``gated`` update: the stage's own Adam
    steps along the gradient the prediction gives its weights, with the learning rate scaled by how surely
    that step points downhill, against how far the true gradient's own step would.

    The evidence is the cosine between the step Adam takes (its bias-corrected moments after that
    gradient) and the gradient the true target, when it arrives, gives the same weights. It is measured on
    the step, in weight space, because that is what moves the stage: on the character GPT an SG at cosine
    0.5 to the true dL/dh gave the first stage's weights a gradient at cosine -0.07 to +0.21 to the true
    one. One batch's cosine varies by about 0.2, and a gate on the mean alone let steps through that cost
    the GPT 0.075 bits by step 200 in a bench run, so the evidence is a lower bound: the mean of the recent
    cosines (exponentially weighted) less two standard errors. It is 0 until two batches have been
    measured and while the bound is below 0, so an SG that has not shown its worth drives no update and the
    stage stays where the SG-off ablation would leave it (docs/results.md, "The gated update").

    Even backprop's Adam step sits well below cosine 1 to its batch's gradient (its moments average many
    batches), so the bound is read against the same cosine for the step Adam takes on the measured true
    gradients alone (moments of its own, fed one true gradient a measurement, Adam's betas taken over the
    `every` steps between measurements): on the paper's FCN the SG's steps sat at 0.2-0.3 while they drove the stage
    well, and a trust of the bound alone (0.13-0.26) made the stage learn at a fifth of its rate, behind the
    paper's ungated rule. The trust is the bound over that reference's mean, clipped to [0, 1]: a step as
    sure as the true gradient's own is taken at the full learning rate. The reference is kept apart from the
    stage's own moments because those are the SG's: a reference built from them was small exactly where the
    SG had steered them wrong, and dividing by it opened the gate (dni with synthetic inputs, docs/results.md).
    """

    DECAY = 0.7  # measurements are every few steps: weight 0.7^k on the one k measurements back
    STANDARD_ERRORS = 2.0

    def __init__(self, every: int = 4):
        self.true_betas = (0.9**every, 0.999**every)  # Adam's betas over the steps between measurements
        self.cosine = self.square = 0.0  # exponentially weighted sums of the cosines and their squares
        self.reference = 0.0  # exponentially weighted sum of the true gradient's own step's cosines
        self.measured = 0
        self.true_moments: tuple[torch.Tensor, torch.Tensor] | None = None  # Adam's moments of the true gradients

    @property
    def scale(self) -> float:
        if self.measured < 2:
            return 0.0
        d, n = self.DECAY, self.measured
        weight = 1 - d**n  # the weights' total: the sums are bias-corrected by it
        mean, reference = self.cosine / weight, self.reference / weight
        variance = max(0.0, self.square / weight - mean**2)
        effective = weight**2 * (1 + d) / ((1 - d) * (1 - d ** (2 * n)))  # (sum of weights)^2 / sum of squares
        bound = mean - self.STANDARD_ERRORS * (variance / effective) ** 0.5
        return min(1.0, bound / reference) if bound > 0 and reference > 0 else 0.0

    def update(self, step: list[torch.Tensor], true: list[torch.Tensor]) -> dict[str, float]:
        """Record one batch: the step the prediction drove (per unit of learning rate, parameter by parameter) and
        the true gradient of the same weights; returns the cosines to it of that step and of the step Adam would
        take on the measured true gradients alone (``sg_step_cosine``, ``sg_true_step_cosine``)."""
        true_flat = torch.cat([t.flatten() for t in true])
        (beta1, beta2), n = self.true_betas, self.measured + 1
        first, second = self.true_moments or (torch.zeros_like(true_flat), torch.zeros_like(true_flat))
        first, second = beta1 * first + (1 - beta1) * true_flat, beta2 * second + (1 - beta2) * true_flat**2
        self.true_moments = (first, second)
        true_step = first / (1 - beta1**n) / ((second / (1 - beta2**n)).sqrt() + 1e-8)
        cosine, reference = _cosine(torch.cat([t.flatten() for t in step]), true_flat), _cosine(true_step, true_flat)
        self.cosine = self.DECAY * self.cosine + (1 - self.DECAY) * cosine
        self.square = self.DECAY * self.square + (1 - self.DECAY) * cosine**2
        self.reference = self.DECAY * self.reference + (1 - self.DECAY) * reference
        self.measured += 1
        return {"sg_step_cosine": cosine, "sg_true_step_cosine": reference}

    def state_dict(self) -> dict:
        return {"cosine": self.cosine, "square": self.square, "reference": self.reference, "measured": self.measured,
                "true_moments": self.true_moments}

    def load_state_dict(self, state: dict) -> None:
        self.cosine, self.square, self.reference = state["cosine"], state["square"], state["reference"]
        self.measured, self.true_moments = state["measured"], state["true_moments"]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else 0.0
