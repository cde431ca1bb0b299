"""MTransE (Chen et al., IJCAI 2017, "Multilingual knowledge graph embeddings for cross-lingual knowledge
alignment"), the translational baseline: TransE on each graph's triples (||h + r - t|| of a triple below that of
a corrupted one by a margin; one head or tail replaced by a random entity of the same graph) and, in one shared
space, the distance-based axis calibration of its seeds (||e1 - e2||, weighted by `alignment_weight`). Entity
vectors are kept on the unit sphere, as TransE's.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import AlignmentData

__all__ = ["MTransE"]


class MTransE(nn.Module):
    def __init__(self, data: AlignmentData, dim: int = 100, margin: float = 1.0, alignment_weight: float = 1.0):
        super().__init__()
        bound = 6 / dim**0.5  # TransE's initialisation
        self.entity_emb = nn.Parameter(torch.empty(data.num_entities, dim).uniform_(-bound, bound))
        self.relation_emb = nn.Parameter(F.normalize(torch.empty(data.num_relations, dim).uniform_(-bound, bound), dim=1))
        self.triples = torch.tensor(data.triples())
        n1 = data.graph1_size
        self.graph_low = torch.where(self.triples[:, 0] < n1, 0, n1)  # the corruptions' range: the triple's own graph
        self.graph_size = torch.where(self.triples[:, 0] < n1, n1, data.num_entities - n1)
        self.margin, self.alignment_weight = margin, alignment_weight

    def forward(self) -> torch.Tensor:
        return F.normalize(self.entity_emb, dim=1)

    def loss(self, emb: torch.Tensor, pairs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calibration = (emb[pairs[:, 0]] - emb[pairs[:, 1]]).norm(dim=1).mean()
        return self._transe_loss(emb, generator) + self.alignment_weight * calibration

    def _transe_loss(self, emb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        h, r, t = self.triples.T
        relation = self.relation_emb[r]
        random = (torch.rand(len(h), generator=generator) * self.graph_size).long() + self.graph_low
        corrupt_head = torch.rand(len(h), generator=generator) < 0.5
        fake_h, fake_t = torch.where(corrupt_head, random, h), torch.where(corrupt_head, t, random)
        true = (emb[h] + relation - emb[t]).norm(dim=1)
        fake = (emb[fake_h] + relation - emb[fake_t]).norm(dim=1)
        return torch.relu(true - fake + self.margin).mean()
