"""Training a KG embedding model on the training triples plus their reciprocals.

Two losses:
- `1vsall` (Lacroix et al. 2018): each (h, r) is scored against every entity and trained with
  cross-entropy towards its true tail, plus the N3 regulariser lambda * sum |factor|^3 / batch.
- `negsamp` (Sun et al. 2019): `negatives` uniformly drawn tails per positive, loss
  -log sigma(s_pos) - sum_i p_i log sigma(-s_neg_i), with self-adversarial weights
  p = softmax(alpha * s_neg), held constant in the gradient.

Batches and negatives come from a generator seeded by (seed, epoch), so a resumed run draws exactly
what the uninterrupted run would have, and data-parallel replicas each take their shard of exactly
the global batch one process would train on.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dni_pipeline.core.data_parallel import SINGLE, Replica

from .models import BILINEAR, MODELS, KGModel

__all__ = ["KGTrainConfig", "LOSSES", "OPTIMIZERS", "PRECISIONS", "TrainingLoss", "epoch_batches", "make_optimizer",
           "train_epoch", "train_step"]

LOSSES = ("1vsall", "negsamp")
OPTIMIZERS = ("adagrad", "adam")
PRECISIONS = ("fp32", "bf16")


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
    precision: str = "fp32"  # of the 1vsall score matrix in training: fp32 or bf16 (evaluation is always fp32)
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
            (self.precision in PRECISIONS, f"unknown precision '{self.precision}': use fp32 or bf16"),
        ]
        return [message for ok, message in checks if not ok]


def make_optimizer(cfg: KGTrainConfig, model: KGModel) -> torch.optim.Optimizer:
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=cfg.lr)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr)


def _scores(cfg: KGTrainConfig, model: KGModel, queries: torch.Tensor) -> torch.Tensor:
    """Every entity's score for each query, in float32; with `precision` bf16 the matrix products (the
    epoch's cost) run in bfloat16 (about 3x faster on a CPU with bf16 instructions), while the
    weights, the loss and the optimizer stay float32."""
    if cfg.precision == "fp32":
        return model.compare(queries, model.entity.weight)
    with torch.autocast(model.entity.weight.device.type, dtype=torch.bfloat16):
        return model.compare(queries, model.entity.weight).float()


class TrainingLoss(nn.Module):
    """The training loss of `model` on a (shard of a) global batch, as a module so that DDP can wrap
    it: DDP synchronises the gradients of what its forward computed. The loss is summed over the shard
    and multiplied by `scale` (world / global batch size, as DDP averages the replicas' gradients), so
    a step equals one process's on the whole batch whatever the shards' sizes."""

    def __init__(self, cfg: KGTrainConfig, model: KGModel):
        super().__init__()
        self.cfg, self.model = cfg, model

    def forward(self, batch: torch.Tensor, negatives: torch.Tensor | None, scale: float) -> torch.Tensor:
        cfg, model = self.cfg, self.model
        h, r, t = batch.T
        if cfg.loss_kind == "1vsall":
            # Heads and tails in one lookup: each lookup's backward fills a dense table-sized buffer.
            heads, tails = model.entity(torch.cat([h, t])).split(len(h))
            relations = model.relation(r)
            scores = _scores(cfg, model, model.combine(heads, relations))
            loss = F.cross_entropy(scores, t, label_smoothing=cfg.label_smoothing, reduction="sum")
            if cfg.n3:
                loss = loss + cfg.n3 * sum(f.pow(3).sum() for f in model.factors(heads, relations, tails))
            return loss * scale
        positive = model.score_triples(h, r, t)
        negative = model.score_candidates(h, r, negatives)
        weights = torch.softmax(cfg.adversarial_temperature * negative.detach(), dim=1)
        return (-F.logsigmoid(positive) - (weights * F.logsigmoid(-negative)).sum(1)).sum() * scale


def epoch_batches(cfg: KGTrainConfig, triples: np.ndarray, epoch: int, num_entities: int,
                  replica: Replica = SINGLE) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, int]]:
    """The epoch's global batches in their shuffled order, as (this replica's triples, their negative
    tails for negsamp or None, the global batch's size). Order and negatives are drawn for the whole
    global batch before it is cut, so every replica sees its part of exactly the batch one process would."""
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    data = torch.from_numpy(triples)[torch.randperm(len(triples), generator=generator)]
    for start in range(0, len(data), cfg.batch_size):
        batch = data[start:start + cfg.batch_size]
        negatives = None
        if cfg.loss_kind == "negsamp":
            negatives = torch.randint(num_entities, (len(batch), cfg.negatives), generator=generator)
        rows = replica.shard(len(batch))
        yield batch[rows], None if negatives is None else negatives[rows], len(batch)


def train_step(loss: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, negatives: torch.Tensor | None,
               global_size: int, world: int = 1) -> float:
    """One optimizer step of `loss` (a TrainingLoss, or DDP wrapping one) on this replica's shard of a
    global batch; returns the shard's summed loss."""
    value = loss(batch, negatives, world / global_size)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value.item() * global_size / world


def train_epoch(cfg: KGTrainConfig, loss: nn.Module, optimizer: torch.optim.Optimizer, triples: np.ndarray,
                epoch: int, *, device: str = "cpu", on_batch: Callable[[float], None] | None = None,
                replica: Replica = SINGLE) -> float:
    """One pass over `triples` (with reciprocals) in shuffled batches; returns the mean loss over all
    of them. `loss` is a TrainingLoss, or DDP around one; `on_batch` hears the fraction of the epoch
    each batch was (for a progress bar)."""
    model = getattr(loss, "module", loss).model  # DDP keeps what it wraps as .module
    model.train()
    total = 0.0
    for batch, negatives, size in epoch_batches(cfg, triples, epoch, model.entity.num_embeddings, replica):
        total += train_step(loss, optimizer, batch.to(device), None if negatives is None else negatives.to(device),
                            size, replica.world)
        if on_batch is not None:
            on_batch(size / len(triples))
    return replica.sum(total) / len(triples)
