"""Training a KG embedding model on the training triples plus their reciprocals.

Two losses:
- `1vsall` (Lacroix et al. 2018): each (h, r) is scored against every entity and trained with
  cross-entropy towards its true tail, plus the N3 regulariser lambda * sum |factor|^3 / batch.
- `negsamp` (Sun et al. 2019): `negatives` uniformly drawn tails per positive, loss
  -log sigma(s_pos) - sum_i p_i log sigma(-s_neg_i), with self-adversarial weights
  p = softmax(alpha * s_neg), held constant in the gradient.

Batches and negatives come from a generator seeded by (seed, epoch), so a resumed run draws exactly
what the uninterrupted run would have.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .models import BILINEAR, MODELS, KGModel

__all__ = ["KGTrainConfig", "LOSSES", "OPTIMIZERS", "make_optimizer", "train_epoch"]

LOSSES = ("1vsall", "negsamp")
OPTIMIZERS = ("adagrad", "adam")


@dataclass
class KGTrainConfig:
    model: str = "complex"
    dim: int = 200  # embedding size (complex numbers for ComplEx and RotatE)
    loss: str = ""  # 1vsall or negsamp; empty: 1vsall for bilinear models, negsamp for distance models
    optimizer: str = "adagrad"
    lr: float = 0.1
    batch_size: int = 500
    epochs: int = 100  # at most; early stopping usually ends sooner
    n3: float = 0.0  # N3 regularisation weight
    label_smoothing: float = 0.0  # 1vsall
    init_scale: float = 1e-3  # std of the initial embeddings
    negatives: int = 256  # negsamp: negative tails per positive
    adversarial_temperature: float = 1.0  # negsamp: alpha (0 gives uniform weights)
    gamma: float = 12.0  # distance models: margin
    p_norm: int = 1  # TransE: L1 or L2
    eval_every: int = 5  # epochs between validation MRRs
    patience: int = 5  # validations without improvement before stopping
    time_budget: float = 0.0  # minutes of training after which the run stops at the next validation; 0: none
    seed: int = 0

    @property
    def loss_kind(self) -> str:
        return self.loss or ("1vsall" if self.model in BILINEAR else "negsamp")

    def problems(self) -> list[str]:
        """What is wrong with this configuration, each with its fix (empty when it is valid)."""
        checks = [
            (self.model in MODELS, f"unknown model '{self.model}': choose one of {', '.join(MODELS)}"),
            (self.loss in ("", *LOSSES), f"unknown loss '{self.loss}': use {' or '.join(LOSSES)}"),
            (self.optimizer in OPTIMIZERS, f"unknown optimizer '{self.optimizer}': use {' or '.join(OPTIMIZERS)}"),
            (self.dim >= 1 and self.batch_size >= 1 and self.epochs >= 1, "--dim, --batch-size and --epochs must be at least 1"),
            (self.lr > 0 and self.init_scale > 0, "--lr and --init-scale must be positive"),
            (self.n3 >= 0 and 0 <= self.label_smoothing < 1, "--n3 must be >= 0 and --label-smoothing in [0, 1)"),
            (self.negatives >= 1 and self.p_norm in (1, 2), "--negatives must be at least 1 and --p-norm 1 or 2"),
            (self.eval_every >= 1 and self.patience >= 1, "--eval-every and --patience must be at least 1"),
            (self.time_budget >= 0, "--time-budget must be >= 0 minutes (0: no budget)"),
        ]
        return [message for ok, message in checks if not ok]


def make_optimizer(cfg: KGTrainConfig, model: KGModel) -> torch.optim.Optimizer:
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=cfg.lr)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def _one_vs_all(cfg: KGTrainConfig, model: KGModel, batch: torch.Tensor) -> torch.Tensor:
    h, r, t = batch.T
    loss = F.cross_entropy(model.score_tails(h, r), t, label_smoothing=cfg.label_smoothing)
    if cfg.n3:
        loss = loss + cfg.n3 * sum(f.pow(3).sum() for f in model.factors(h, r, t)) / len(batch)
    return loss


def _negative_sampling(cfg: KGTrainConfig, model: KGModel, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    h, r, t = batch.T
    negatives = torch.randint(model.entity.num_embeddings, (len(batch), cfg.negatives), generator=generator).to(batch.device)
    positive = model.score_triples(h, r, t)
    negative = model.score_candidates(h, r, negatives)
    weights = torch.softmax(cfg.adversarial_temperature * negative.detach(), dim=1)
    return (-F.logsigmoid(positive) - (weights * F.logsigmoid(-negative)).sum(1)).mean()


def train_epoch(cfg: KGTrainConfig, model: KGModel, optimizer: torch.optim.Optimizer, triples: np.ndarray,
                epoch: int, device: str = "cpu", on_batch: Callable[[float], None] | None = None) -> float:
    """One pass over `triples` (with reciprocals) in shuffled batches; returns the mean loss.
    `on_batch` hears the fraction of the epoch each batch was (for a progress bar)."""
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    data = torch.from_numpy(triples)[torch.randperm(len(triples), generator=generator)].to(device)
    model.train()
    total = 0.0
    for start in range(0, len(data), cfg.batch_size):
        batch = data[start:start + cfg.batch_size]
        if cfg.loss_kind == "1vsall":
            loss = _one_vs_all(cfg, model, batch)
        else:
            loss = _negative_sampling(cfg, model, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        if on_batch is not None:
            on_batch(len(batch) / len(data))
    return total / len(data)
