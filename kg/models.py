"""Knowledge-graph embedding models, each a scoring function s(h, r, t) (higher is more plausible).

Every model holds 2R relation embeddings: r and its reciprocal r + R, so a head query (?, r, t) is the
tail query (t, r + R, ?) and one `score_tails` serves both directions (Lacroix et al. 2018).

- TransE (Bordes et al. 2013):    s = gamma - ||e_h + w_r - e_t||_p
- DistMult (Yang et al. 2015):    s = <e_h, w_r, e_t>
- ComplEx (Trouillon et al. 2016): s = Re(<e_h, w_r, conj(e_t)>), complex vectors of `dim` numbers
- RotatE (Sun et al. 2019):       s = gamma - sum_i |e_h,i * w_r,i - e_t,i|, |w_r,i| = 1 (phases)

Bilinear models (DistMult, ComplEx) score a query against every candidate with one matrix product and
are trained 1-vs-all with N3 regularisation; distance models (TransE, RotatE) with negative sampling.
"""

import math

import torch
from torch import nn

__all__ = ["MODELS", "BILINEAR", "KGModel", "build_model"]

BILINEAR = ("distmult", "complex")
# Elements of the (batch, candidates, dim) difference a distance model builds at once: ~256 MB floats.
DISTANCE_BLOCK = 1 << 26


class KGModel(nn.Module):
    """Entity and (2 x num_relations) relation embeddings; subclasses define the score."""

    def __init__(self, num_entities: int, num_relations: int, dim: int, init_scale: float):
        super().__init__()
        self.entity = nn.Embedding(num_entities, self.entity_width(dim))
        self.relation = nn.Embedding(2 * num_relations, self.relation_width(dim))
        for table in (self.entity, self.relation):
            nn.init.normal_(table.weight, std=init_scale)

    @staticmethod
    def entity_width(dim: int) -> int:
        return dim

    relation_width = entity_width

    def query(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """What the candidate tails are compared with: (batch, width)."""
        return self.combine(self.entity(heads), self.relation(relations))

    def combine(self, heads: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
        """The query from head and relation embeddings already looked up."""
        raise NotImplementedError

    def compare(self, queries: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """Scores of every query against every candidate: (batch, candidates)."""
        raise NotImplementedError

    def score_tails(self, heads: torch.Tensor, relations: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores of candidate tails start..stop-1 for each (head, relation): (batch, stop - start)."""
        tails = self.entity.weight if start == 0 and stop is None else self.entity.weight[start:stop]
        return self.compare(self.query(heads, relations), tails)  # (a whole-table slice would cost a full copy in backward)

    def score_triples(self, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """Scores of the given triples: (batch,)."""
        raise NotImplementedError

    def score_candidates(self, heads: torch.Tensor, relations: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores of given candidate tails per query, candidates (batch, k): (batch, k)."""
        raise NotImplementedError

    def factors(self, heads, relations, tails) -> list[torch.Tensor]:
        """Per-coordinate magnitudes the N3 regulariser cubes (bilinear models), from embeddings
        already looked up."""
        return []


class DistMult(KGModel):
    def combine(self, heads, relations):
        return heads * relations

    def compare(self, queries, tails):
        return queries @ tails.T

    def score_triples(self, heads, relations, tails):
        return (self.query(heads, relations) * self.entity(tails)).sum(-1)

    def score_candidates(self, heads, relations, candidates):
        return torch.einsum("bd,bkd->bk", self.query(heads, relations), self.entity(candidates))

    def factors(self, heads, relations, tails):
        return [heads.abs(), relations.abs(), tails.abs()]


class ComplEx(DistMult):
    """Complex vectors stored as [real | imaginary]; Re(<h, r, conj(t)>) = [q_re | q_im] . [t_re | t_im]
    with q = h * r, so candidates are still scored by one matrix product."""

    @staticmethod
    def entity_width(dim):
        return 2 * dim

    relation_width = entity_width

    def combine(self, heads, relations):
        h_re, h_im = heads.chunk(2, -1)
        r_re, r_im = relations.chunk(2, -1)
        return torch.cat([h_re * r_re - h_im * r_im, h_re * r_im + h_im * r_re], -1)

    def factors(self, heads, relations, tails):
        modulus = lambda x: x.view(*x.shape[:-1], 2, -1).pow(2).sum(-2).sqrt()  # noqa: E731
        return [modulus(heads), modulus(relations), modulus(tails)]


class _Distance(KGModel):
    """s = gamma - distance(query, tail); candidates are compared in blocks so memory stays bounded."""

    def __init__(self, num_entities, num_relations, dim, init_scale, gamma: float):
        super().__init__(num_entities, num_relations, dim, init_scale)
        self.gamma = gamma

    def distance(self, queries: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """Distances between matched rows: queries (..., width), tails (..., width) -> (...)."""
        raise NotImplementedError

    def compare(self, queries, tails):
        rows = max(1, DISTANCE_BLOCK // max(1, len(tails) * queries.shape[1]))  # queries per block
        blocks = [self.distance(queries[i:i + rows, None, :], tails[None]) for i in range(0, len(queries), rows)]
        return self.gamma - torch.cat(blocks) if blocks else queries.new_zeros(0, len(tails))

    def score_triples(self, heads, relations, tails):
        return self.gamma - self.distance(self.query(heads, relations), self.entity(tails))

    def score_candidates(self, heads, relations, candidates):
        return self.gamma - self.distance(self.query(heads, relations)[:, None, :], self.entity(candidates))


class TransE(_Distance):
    def __init__(self, num_entities, num_relations, dim, init_scale, gamma, p_norm: int = 1):
        super().__init__(num_entities, num_relations, dim, init_scale, gamma)
        self.p_norm = p_norm

    def combine(self, heads, relations):
        return heads + relations

    def distance(self, queries, tails):
        return (queries - tails).norm(p=self.p_norm, dim=-1)


class RotatE(_Distance):
    """Entities complex ([real | imaginary]); a relation is `dim` phases, a rotation in each coordinate."""

    @staticmethod
    def entity_width(dim):
        return 2 * dim

    @staticmethod
    def relation_width(dim):
        return dim

    def __init__(self, num_entities, num_relations, dim, init_scale, gamma):
        super().__init__(num_entities, num_relations, dim, init_scale, gamma)
        nn.init.uniform_(self.relation.weight, -math.pi, math.pi)

    def combine(self, heads, relations):
        h_re, h_im = heads.chunk(2, -1)
        r_re, r_im = torch.cos(relations), torch.sin(relations)
        return torch.cat([h_re * r_re - h_im * r_im, h_re * r_im + h_im * r_re], -1)

    def distance(self, queries, tails):
        diff = queries - tails
        d_re, d_im = diff.chunk(2, -1)
        return torch.sqrt(d_re.square() + d_im.square() + 1e-12).sum(-1)


MODELS = {"transe": TransE, "distmult": DistMult, "complex": ComplEx, "rotate": RotatE}


def build_model(name: str, num_entities: int, num_relations: int, *, dim: int, init_scale: float,
                gamma: float, p_norm: int, seed: int) -> KGModel:
    torch.manual_seed(seed)
    cls = MODELS[name]
    if cls is TransE:
        return TransE(num_entities, num_relations, dim, init_scale, gamma, p_norm)
    if issubclass(cls, _Distance):
        return cls(num_entities, num_relations, dim, init_scale, gamma)
    return cls(num_entities, num_relations, dim, init_scale)
