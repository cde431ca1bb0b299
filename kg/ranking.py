"""Filtered link-prediction ranks, computed the way fast libraries do: one score matrix per query batch,
chunked over entities so memory stays bounded, other known answers filtered through a CSR index,
and ranks counted (never sorted) with ties resolved realistically.

A query is (entity, relation) asking for the missing tail; head queries become tail queries of the
reciprocal relation. For a true answer scored s, with g entities scored above it and e other
entities scored equal (known answers excluded): optimistic rank g + 1, pessimistic g + e + 1,
realistic the mean of the two.
"""

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["AnswerIndex", "filtered_ranks", "rank_metrics"]


class AnswerIndex:
    """For each (entity, relation) query, every known answer, in CSR form: answers of query q are
    `answers[offsets[q]:offsets[q + 1]]`, queries numbered entity * num_relations + relation."""

    def __init__(self, triples: np.ndarray, num_entities: int, num_relations: int):
        keys = triples[:, 0].astype(np.int64) * num_relations + triples[:, 1]
        order = np.lexsort((triples[:, 2], keys))
        keys, tails = keys[order], triples[order, 2].astype(np.int64)
        unique = np.ones(len(keys), dtype=bool)
        unique[1:] = (keys[1:] != keys[:-1]) | (tails[1:] != tails[:-1])
        keys, tails = keys[unique], tails[unique]
        self.num_relations = num_relations
        self.offsets = np.zeros(num_entities * num_relations + 1, dtype=np.int64)
        np.add.at(self.offsets, keys + 1, 1)
        self.offsets = np.cumsum(self.offsets)
        self.answers = tails

    def of(self, entity: int, relation: int) -> np.ndarray:
        q = entity * self.num_relations + relation
        return self.answers[self.offsets[q]:self.offsets[q + 1]]


def filtered_ranks(score_tails: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor],
                   score_triples: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                   queries: np.ndarray, index: AnswerIndex, num_entities: int, *, batch_size: int = 256,
                   chunk_size: int = 8192, device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Optimistic and pessimistic filtered ranks of the true tails of `queries` (rows entity, relation,
    tail). `score_tails(entities, relations, start, stop)` scores candidate tails start..stop-1, shape
    (batch, stop - start), as a new tensor (it is overwritten in place); `score_triples(entities,
    relations, tails)` scores given triples, (batch,)."""
    optimistic = np.empty(len(queries), dtype=np.int64)
    pessimistic = np.empty(len(queries), dtype=np.int64)
    for begin in range(0, len(queries), batch_size):
        batch = queries[begin:begin + batch_size]
        entities, relations, tails = torch.from_numpy(batch).to(device).T
        true_scores = score_triples(entities, relations, tails)
        # Known answers and the true one: (row, entity) pairs left out of the counts. The true answer
        # is compared through `true_scores` only: its entry in the score matrix may differ in the
        # last bit (another summation order) and must count neither above nor equal.
        rows, cols = [], []
        for i, (e, r, t) in enumerate(batch):
            known = index.of(int(e), int(r))
            excluded = np.append(known[known != t], t)
            rows.append(np.full(len(excluded), i))
            cols.append(excluded)
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        above = torch.zeros(len(batch), dtype=torch.long, device=device)
        equal = torch.zeros(len(batch), dtype=torch.long, device=device)
        for start in range(0, num_entities, chunk_size):
            stop = min(start + chunk_size, num_entities)
            scores = score_tails(entities, relations, start, stop)
            in_chunk = (cols >= start) & (cols < stop)
            masked = torch.from_numpy(rows[in_chunk]).to(device), torch.from_numpy(cols[in_chunk] - start).to(device)
            scores[masked] = float("-inf")
            above += (scores > true_scores[:, None]).sum(1)
            equal += (scores == true_scores[:, None]).sum(1)
        optimistic[begin:begin + len(batch)] = (above + 1).cpu().numpy()
        pessimistic[begin:begin + len(batch)] = (above + equal + 1).cpu().numpy()
    return optimistic, pessimistic


def rank_metrics(ranks: np.ndarray) -> dict:
    """MRR and Hits@1/3/10 of (possibly fractional) ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return {"mrr": float(np.mean(1.0 / ranks)), **{f"hits@{k}": float(np.mean(ranks <= k)) for k in (1, 3, 10)}}
