"""The filtered link-prediction protocol over both directions, and the Countries AUC-PR.

Every evaluated triple (h, r, t) asks two queries: (h, r, ?) and, through the reciprocal relation,
(t, r + R, ?). Known answers from train + valid + test are filtered out; ranks are realistic (mean
of optimistic and pessimistic), with the pessimistic figures reported beside them.
"""

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from .datasets import KGDataset, with_reciprocals
from .models import KGModel
from .ranking import AnswerIndex, filtered_ranks, rank_metrics

__all__ = ["answer_index", "evaluate", "random_mrr", "region_auc_pr"]


def answer_index(data: KGDataset) -> AnswerIndex:
    """Every known (entity, relation) -> answers, both directions: the filter."""
    return AnswerIndex(with_reciprocals(data.all_known(), data.num_relations), data.num_entities, 2 * data.num_relations)


@torch.no_grad()
def evaluate(model: KGModel, data: KGDataset, split: str, index: AnswerIndex, *, batch_size: int = 256,
             chunk_size: int = 8192) -> dict:
    """Filtered MRR and Hits@1/3/10 of `split`, both directions: realistic ties at the top level,
    `pessimistic` and per-direction (`tail`, `head`) realistic MRRs beside them."""
    model.eval()
    queries = with_reciprocals(data.splits[split], data.num_relations)
    optimistic, pessimistic = filtered_ranks(model.score_tails, model.score_triples, queries, index, data.num_entities,
                                             batch_size=batch_size, chunk_size=chunk_size,
                                             device=model.entity.weight.device)
    realistic = (optimistic + pessimistic) / 2
    half = len(data.splits[split])
    return {**rank_metrics(realistic), "pessimistic": rank_metrics(pessimistic),
            "tail_mrr": rank_metrics(realistic[:half])["mrr"], "head_mrr": rank_metrics(realistic[half:])["mrr"],
            "triples": half}


def random_mrr(data: KGDataset, split: str, index: AnswerIndex) -> float:
    """The expected MRR of a scorer that ranks at random: a query with n candidates left after
    filtering has expected reciprocal rank H_n / n. The floor every model must clear."""
    queries = with_reciprocals(data.splits[split], data.num_relations)
    keys = queries[:, 0] * index.num_relations + queries[:, 1]
    candidates = data.num_entities - (index.offsets[keys + 1] - index.offsets[keys]) + 1
    harmonic = np.cumsum(1.0 / np.arange(1, data.num_entities + 1))
    return float(np.mean(harmonic[candidates - 1] / candidates))


@torch.no_grad()
def region_auc_pr(model: KGModel, data: KGDataset, split: str, relation: str = "locatedin") -> float:
    """Countries protocol (Bouchard et al. 2015): each (country, locatedin, ?) of the split is scored
    against the regions only; the average precision of all (country, region) pairs, the true region
    positive, is the AUC-PR."""
    model.eval()
    regions = torch.tensor([data.entities.index(name) for name in data.regions])
    triples = data.splits[split]
    located = data.relations.index(relation)
    triples = triples[triples[:, 1] == located]
    heads, relations = torch.from_numpy(triples[:, 0]), torch.from_numpy(triples[:, 1])
    scores = model.score_candidates(heads, relations, regions.expand(len(triples), -1))
    labels = regions[None, :].numpy() == triples[:, 2:3]
    return float(average_precision_score(labels.ravel(), scores.numpy().ravel()))
