"""GCN-Align (Wang et al., EMNLP 2018, "Cross-lingual knowledge graph alignment via graph convolutional
networks"), its structure embedding, after the authors' code (1049451037/GCN-Align): a two-layer graph convolution
of the union of both graphs over learned entity vectors with no weight matrices, h = A relu(A E), E initialised
row-normalised, and the authors' adjacency: a triple (h, r, t) weighs the edge h -> t by r's inverse functionality
and t -> h by its functionality (each at least 0.3), self loops added and the matrix normalised symmetrically
(D^-1/2 (A + I) D^-1/2). Trained by `margin_loss` (L1 distance, 5 corrupted pairs per seed, margin 3) with plain
SGD at learning rate 20 for 2,000 full-batch epochs, as theirs.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import AlignmentData
from .losses import margin_loss

__all__ = ["GCNAlign", "weighted_adjacency"]


def weighted_adjacency(triples: np.ndarray, num_entities: int) -> torch.Tensor:
    """The symmetric-normalised, functionality-weighted adjacency with self loops (GCN-Align's `get_weighted_adj`)."""
    h, r, t = triples[:, 0], triples[:, 1], triples[:, 2]
    per_relation = np.bincount(r)
    heads = np.bincount(np.unique(r * num_entities + h) // num_entities, minlength=len(per_relation))
    tails = np.bincount(np.unique(r * num_entities + t) // num_entities, minlength=len(per_relation))
    functionality = heads / np.maximum(per_relation, 1)  # distinct heads per triple of the relation
    inverse = tails / np.maximum(per_relation, 1)
    keep = h != t
    rows = np.concatenate([h[keep], t[keep], np.arange(num_entities)])
    cols = np.concatenate([t[keep], h[keep], np.arange(num_entities)])
    values = np.concatenate([np.maximum(inverse[r[keep]], 0.3), np.maximum(functionality[r[keep]], 0.3),
                             np.ones(num_entities)])
    matrix = torch.sparse_coo_tensor(torch.tensor(np.stack([rows, cols])), torch.tensor(values, dtype=torch.float32),
                                     (num_entities, num_entities), check_invariants=False).coalesce()
    degree = torch.zeros(num_entities).index_add_(0, matrix.indices()[0], matrix.values())
    scale = degree.rsqrt()
    i, j = matrix.indices()
    return torch.sparse_coo_tensor(matrix.indices(), matrix.values() * scale[i] * scale[j], matrix.shape,
                                   check_invariants=False).coalesce()


class GCNAlign(nn.Module):
    def __init__(self, data: AlignmentData, dim: int = 200):
        super().__init__()
        self.adjacency = weighted_adjacency(data.triples(), data.num_entities)
        initial = nn.init.trunc_normal_(torch.empty(data.num_entities, dim), std=data.num_entities**-0.5)
        self.entity_emb = nn.Parameter(F.normalize(initial, dim=1))

    def forward(self) -> torch.Tensor:
        hidden = torch.relu(torch.sparse.mm(self.adjacency, self.entity_emb))
        return torch.sparse.mm(self.adjacency, hidden)

    def loss(self, emb: torch.Tensor, pairs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return margin_loss(emb, pairs, generator=generator)
