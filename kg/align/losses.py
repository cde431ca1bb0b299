"""How seed pairs pull aligned entities together: the two losses the alignment models train with.

- `margin_loss` (GCN-Align, Wang et al. 2018, eq. 3): L1 distance of each seed pair below that of `negatives`
  corrupted pairs (one side replaced by a random entity of either graph, as the authors' code) by a margin gamma.
- `hard_negative_loss` (Dual-AMN, Mao et al. 2021, "normalized hard sample mining", eq. 12-14): for each side of a
  seed pair, the squared distance to the partner against the squared distance to every entity, the margins
  standardised per pair and summed through a LogSumExp at temperature lamb, which weighs the hardest negatives most.
"""

import torch

__all__ = ["hard_negative_loss", "margin_loss"]


def margin_loss(emb: torch.Tensor, pairs: torch.Tensor, *, negatives: int = 5, gamma: float = 3.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    left, right = emb[pairs[:, 0]], emb[pairs[:, 1]]
    positive = (left - right).abs().sum(dim=1, keepdim=True)  # (B, 1)
    fake = torch.randint(0, emb.shape[0], (2, len(pairs), negatives), generator=generator)
    corrupt_right = (left[:, None] - emb[fake[0]]).abs().sum(dim=2)  # (B, negatives)
    corrupt_left = (emb[fake[1]] - right[:, None]).abs().sum(dim=2)
    return (torch.relu(positive - corrupt_right + gamma).mean() + torch.relu(positive - corrupt_left + gamma).mean()) / 2


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * a).sum(dim=1, keepdim=True) + (b * b).sum(dim=1)[None] - 2 * a @ b.T


def hard_negative_loss(emb: torch.Tensor, pairs: torch.Tensor, *, gamma: float = 1.0, lamb: float = 30.0,
                       tau: float = 10.0) -> torch.Tensor:
    left, right = emb[pairs[:, 0]], emb[pairs[:, 1]]
    positive = ((left - right) ** 2).sum(dim=1, keepdim=True)  # (B, 1)
    keep = torch.ones(len(pairs), emb.shape[0], device=emb.device)
    rows = torch.arange(len(pairs), device=emb.device)
    keep[rows, pairs[:, 0]] = 0  # the pair's own entities are not negatives
    keep[rows, pairs[:, 1]] = 0
    total = 0.0
    for anchor in (left, right):
        margins = (positive - _squared_distances(anchor, emb) + gamma) * keep
        margins = (margins - margins.mean(dim=1, keepdim=True).detach()) / margins.std(dim=1, keepdim=True).detach()
        total = total + torch.logsumexp(lamb * margins + tau, dim=1).mean()
    return total
