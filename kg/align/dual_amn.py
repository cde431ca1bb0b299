"""Dual-AMN (Mao et al., WWW 2021, "Boosting the speed of entity alignment 10x: Dual attention matching network
with normalized hard sample mining"), structure only, after the authors' code (MaoXinn/Dual-AMN).

Two encoders of the union of both graphs, one fed each entity's mean neighbour embedding, one its mean incident
relation embedding. Each layer of an encoder (the "simplified relational attention layer") reflects every
neighbour's representation in the hyperplane of the relations joining it to the entity (a Householder reflection,
RREA's), weighs the neighbours by a softmax over their relations and sums: h_i' = tanh(sum_j a_ij (I - 2 r_ij r_ij^T) h_j)
with r_ij the normalised mean embedding of the relations from i to j and a_ij = softmax_j(q^T r_ij). The layers'
outputs are concatenated; the "proxy matching" layer then compares each entity with 64 learned proxy vectors and
gates between its representation and its difference to the proxies' mix. Trained by `hard_negative_loss`.
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import AlignmentData
from .losses import hard_negative_loss

__all__ = ["DualAMN", "RelationalGraph"]


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-0.05, 0.05))  # Keras' Embedding initialiser, as the authors'


def _glorot(*shape: int) -> nn.Parameter:
    return nn.Parameter(nn.init.xavier_uniform_(torch.empty(*shape)))


def _row_mean(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """The sparse matrix averaging, for each row, the distinct columns it names."""
    keys = np.unique(rows.astype(np.int64) * shape[1] + cols)
    rows, cols = keys // shape[1], keys % shape[1]
    counts = np.bincount(rows, minlength=shape[0])
    values = torch.tensor(1.0 / counts[rows], dtype=torch.float32)
    return torch.sparse_coo_tensor(torch.tensor(np.stack([rows, cols])), values, shape, check_invariants=False).coalesce()


class RelationalGraph:
    """The union graph as the encoders read it: entity pairs (both directions), their relations, the means."""

    def __init__(self, data: AlignmentData):
        triples, n, r = data.triples(), data.num_entities, data.num_relations
        h, rel, t = triples[:, 0], triples[:, 1], triples[:, 2]
        # Each direction of each triple, the inverse direction's relation offset by R.
        src, dst, kind = np.concatenate([h, t]), np.concatenate([t, h]), np.concatenate([rel, rel + r])
        pair_keys, pair_of = np.unique(src * n + dst, return_inverse=True)
        self.heads = torch.tensor(pair_keys // n)  # (P,) the entity a message goes to
        self.tails = torch.tensor(pair_keys % n)  # (P,) the neighbour it comes from
        self.pair_relations = _row_mean(pair_of, kind, (len(pair_keys), 2 * r))  # (P, 2R): mean over relations
        loops = np.arange(n)
        self.entity_mean = _row_mean(np.concatenate([src, loops]), np.concatenate([dst, loops]), (n, n))
        # An entity's relations: column rel as a tail ("in"), R + rel as a head ("out").
        self.relation_mean = _row_mean(np.concatenate([t, h]), np.concatenate([rel, rel + r]), (n, 2 * r))
        self.num_entities, self.num_relation_kinds = n, 2 * r


def _segment_softmax(logits: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    peak = torch.full((count,), -torch.inf).index_reduce_(0, segments, logits, "amax", include_self=True)
    weights = (logits - peak[segments]).exp()
    return weights / torch.zeros(count).index_add_(0, segments, weights)[segments]


class RelationalAttention(nn.Module):
    """One encoder: `depth` relational attention layers and the proxy matching gate (the authors' NR_GraphAttention)."""

    def __init__(self, dim: int, depth: int = 2, proxies: int = 64):
        super().__init__()
        width = dim * (depth + 1)
        self.attention = nn.ParameterList([_glorot(dim, 1) for _ in range(depth)])
        self.proxy = _glorot(proxies, width)
        self.gate = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, features: torch.Tensor, relation_emb: torch.Tensor, graph: RelationalGraph) -> torch.Tensor:
        relations = F.normalize(torch.sparse.mm(graph.pair_relations, relation_emb), dim=1)  # (P, d): r_ij
        x = torch.tanh(features)
        outputs = [x]
        for query in self.attention:
            neighbours = x[graph.tails]
            neighbours = neighbours - 2 * (neighbours * relations).sum(dim=1, keepdim=True) * relations
            weights = _segment_softmax((relations @ query).squeeze(1), graph.heads, graph.num_entities)
            x = torch.tanh(torch.zeros_like(x).index_add_(0, graph.heads, neighbours * weights[:, None]))
            outputs.append(x)
        out = torch.cat(outputs, dim=1)
        proxy_weights = torch.softmax(F.normalize(out, dim=1) @ F.normalize(self.proxy, dim=1).T, dim=1)
        away = out - proxy_weights @ self.proxy
        gate = torch.sigmoid(self.gate(away))
        return gate * out + (1 - gate) * away


class DualAMN(nn.Module):
    """Entity embeddings of both graphs: the entity-view and relation-view encoders' outputs side by side."""

    def __init__(self, data: AlignmentData, dim: int = 128, depth: int = 2, dropout: float = 0.3):
        super().__init__()
        self.graph = RelationalGraph(data)
        self.entity_emb = _uniform(self.graph.num_entities, dim)
        self.relation_emb = _uniform(self.graph.num_relation_kinds, dim)
        self.entity_view, self.relation_view = RelationalAttention(dim, depth), RelationalAttention(dim, depth)
        self.dropout = nn.Dropout(dropout)

    def forward(self) -> torch.Tensor:
        g = self.graph
        by_entities = self.entity_view(torch.sparse.mm(g.entity_mean, self.entity_emb), self.relation_emb, g)
        by_relations = self.relation_view(torch.sparse.mm(g.relation_mean, self.relation_emb), self.relation_emb, g)
        return self.dropout(torch.cat([by_entities, by_relations], dim=1))

    def loss(self, emb: torch.Tensor, pairs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return hard_negative_loss(emb, pairs)
