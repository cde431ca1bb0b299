"""Knowledge-graph completion: the highest-scoring triples that are not already known.

A query fixes (head, relation) and asks for tails, or (tail, relation) and asks for heads through the
reciprocal relation; with only a relation, or nothing, every head (and every relation) is asked.
Candidates are scored one query batch at a time and only a running top-k is kept, so the whole graph
fits in bounded memory.
"""

from pathlib import Path

import numpy as np
import torch

from dni_pipeline.core.errors import UserError
from dni_pipeline.core.files import atomic_path

from .datasets import KGDataset
from .models import KGModel
from .ranking import AnswerIndex

__all__ = ["complete", "write_tsv"]


def _id(names: list[str], name: str, kind: str) -> int:
    try:
        return names.index(name)
    except ValueError:
        raise UserError(f"unknown {kind} '{name}': it does not occur in the training triples") from None


@torch.no_grad()
def complete(model: KGModel, data: KGDataset, index: AnswerIndex, *, head: str | None = None,
             relation: str | None = None, tail: str | None = None, top_k: int = 10,
             batch_size: int = 256) -> list[tuple[str, str, str, float]]:
    """The `top_k` unknown triples (head, relation, tail, score), best first, among the queries that
    `head` / `relation` / `tail` select (at most one of head and tail)."""
    if head is not None and tail is not None:
        raise UserError("give --head or --tail, not both: the other end is what completion predicts")
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    R = data.num_relations
    relations = [_id(data.relations, relation, "relation")] if relation is not None else list(range(R))
    if tail is not None:  # heads of (?, r, tail) are the tails of (tail, r + R, ?)
        queries = [(_id(data.entities, tail, "entity"), r + R) for r in relations]
    elif head is not None:
        queries = [(_id(data.entities, head, "entity"), r) for r in relations]
    else:
        queries = [(e, r) for e in range(data.num_entities) for r in relations]
    queries = np.array(queries, dtype=np.int64)
    model.eval()
    device = model.entity.weight.device
    best_scores = torch.empty(0)
    best_triples = np.empty((0, 3), dtype=np.int64)
    for begin in range(0, len(queries), batch_size):
        batch = queries[begin:begin + batch_size]
        scores = model.score_tails(*torch.from_numpy(batch).to(device).T).cpu()
        for i, (e, r) in enumerate(batch):
            scores[i, index.of(int(e), int(r))] = float("-inf")  # known triples are not predictions
        k = min(top_k, scores.numel())
        values, flat = scores.flatten().topk(k)
        rows, answers = np.divmod(flat.numpy(), data.num_entities)
        found = np.stack([batch[rows, 0], batch[rows, 1], answers], axis=1)
        keep = torch.isfinite(values).numpy()
        best_scores = torch.cat([best_scores, values[keep]])
        best_triples = np.concatenate([best_triples, found[keep]])
        order = best_scores.argsort(descending=True)[:top_k]
        best_scores, best_triples = best_scores[order], best_triples[order.numpy()]
    results = []
    for (e, r, answer), score in zip(best_triples, best_scores.tolist()):
        h, t = (answer, e) if r >= R else (e, answer)
        results.append((data.entities[h], data.relations[r % R], data.entities[t], score))
    return results


def write_tsv(path: Path, triples: list[tuple[str, str, str, float]]) -> None:
    """head, relation, tail, score per line, with a header; written whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_text("head\trelation\ttail\tscore\n" + "".join(f"{h}\t{r}\t{t}\t{s:.6g}\n" for h, r, t, s in triples))
