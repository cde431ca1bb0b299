"""Training an alignment model on its seeds, and bootstrapping: what one epoch and one round do, no files here.

A run trains `epochs` epochs on the seeds, then, for each of `rounds` bootstrapping rounds (BootEA's idea, as
Dual-AMN's iterative setting runs it), adds the mutual nearest neighbours under CSLS among the entities not yet
paired (candidates: the test entities of both graphs, as Dual-AMN) to the seeds and trains `round_epochs` more.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .data import AlignmentData
from .dual_amn import DualAMN
from .gcn_align import GCNAlign
from .inference import cosine, csls, mutual_nearest
from .mtranse import MTransE

__all__ = ["ALIGN_MODELS", "MODEL_DEFAULTS", "AlignTrainConfig", "bootstrap", "build_align_model", "embeddings",
           "make_align_optimizer", "train_align_epoch"]

ALIGN_MODELS = {"dual-amn": DualAMN, "gcn-align": GCNAlign, "mtranse": MTransE}
# Each model's settings in its authors' code (Dual-AMN: RMSprop 0.005, batches of 1024 seeds, 20 epochs then 5 per
# round, dim 128, dropout 0.3; GCN-Align: full-batch SGD at 20, 2,000 epochs, dim 200); MTransE: full-batch Adam.
MODEL_DEFAULTS = {
    "dual-amn": {"dim": 128, "optimizer": "rmsprop", "lr": 0.005, "batch_size": 1024, "epochs": 20, "round_epochs": 5},
    "gcn-align": {"dim": 200, "optimizer": "sgd", "lr": 20.0, "batch_size": 0, "epochs": 2000, "round_epochs": 200},
    "mtranse": {"dim": 100, "optimizer": "adam", "lr": 0.01, "batch_size": 0, "epochs": 300, "round_epochs": 50},
}


@dataclass
class AlignTrainConfig:
    model: str = "dual-amn"
    dim: int = 0  # 0: the model's default
    optimizer: str = ""  # adam, rmsprop or sgd; "": the model's
    lr: float = 0.0  # 0: the model's
    batch_size: int = -1  # seed pairs per step; 0: all of them; -1: the model's
    epochs: int = 0  # epochs on the seeds before the first bootstrapping round; 0: the model's
    rounds: int = 0  # bootstrapping rounds
    round_epochs: int = 0  # epochs after each round; 0: the model's
    seed: int = 0  # of the weights, the batches and the negatives

    def resolved(self) -> "AlignTrainConfig":
        """Every 0 / "" / -1 replaced by the model's default."""
        defaults = MODEL_DEFAULTS.get(self.model, {})
        unset = {"dim": 0, "optimizer": "", "lr": 0.0, "batch_size": -1, "epochs": 0, "round_epochs": 0}
        values = {k: defaults[k] if getattr(self, k) == v else getattr(self, k) for k, v in unset.items()}
        return AlignTrainConfig(model=self.model, rounds=self.rounds, seed=self.seed, **values)

    def problems(self) -> list[str]:
        problems = []
        if self.model not in ALIGN_MODELS:
            problems.append(f"unknown alignment model '{self.model}': choose one of {', '.join(ALIGN_MODELS)}")
            return problems
        r = self.resolved()
        if r.optimizer not in ("adam", "rmsprop", "sgd"):
            problems.append(f"invalid optimizer '{r.optimizer}': use adam, rmsprop or sgd")
        if r.dim < 1 or r.lr <= 0 or r.epochs < 1 or r.round_epochs < 1 or r.batch_size < 0 or self.rounds < 0:
            problems.append("--dim, --lr, --epochs and --round-epochs must be positive, --batch-size and --rounds 0 or more")
        return problems

    def total_epochs(self) -> int:
        r = self.resolved()
        return r.epochs + self.rounds * r.round_epochs

    def round_ends(self) -> list[int]:
        """The epochs after which a bootstrapping round adds seeds."""
        r = self.resolved()
        return [r.epochs + i * r.round_epochs for i in range(self.rounds)]


def build_align_model(cfg: AlignTrainConfig, data: AlignmentData) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    return ALIGN_MODELS[cfg.model](data, dim=cfg.resolved().dim)


def make_align_optimizer(cfg: AlignTrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    r = cfg.resolved()
    if r.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=r.lr, alpha=0.9, eps=1e-7)  # Keras' RMSprop, as Dual-AMN's
    if r.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=r.lr)
    return torch.optim.Adam(model.parameters(), lr=r.lr)


def train_align_epoch(cfg: AlignTrainConfig, model, optimizer, seeds: np.ndarray, epoch: int) -> float:
    """One pass over the seeds in shuffled batches (full-graph forward each step); the mean loss. The shuffle and the
    negatives are seeded by (seed, epoch), so a resumed run repeats the epochs it redoes."""
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout's
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(seeds), generator=generator)
    size = cfg.resolved().batch_size or len(seeds)
    model.train()
    losses = []
    for start in range(0, len(seeds), size):
        pairs = torch.as_tensor(seeds)[order[start:start + size]]
        loss = model.loss(model(), pairs, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


@torch.no_grad()
def embeddings(model) -> torch.Tensor:
    """Every entity's vector, both graphs, in evaluation mode (no dropout)."""
    model.eval()
    return model()


def bootstrap(model, seeds: np.ndarray, candidates1: np.ndarray, candidates2: np.ndarray) -> np.ndarray:
    """The mutual nearest neighbours under CSLS between the candidates of graph 1 and of graph 2 not in `seeds`."""
    emb = embeddings(model)
    free1 = candidates1[~np.isin(candidates1, seeds[:, 0])]
    free2 = candidates2[~np.isin(candidates2, seeds[:, 1])]
    if not len(free1) or not len(free2):
        return np.zeros((0, 2), dtype=np.int64)
    found = mutual_nearest(csls(cosine(emb[torch.as_tensor(free1)], emb[torch.as_tensor(free2)])))
    return np.stack([free1[found[:, 0]], free2[found[:, 1]]], axis=1)
