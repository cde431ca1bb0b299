"""Filtered ranking against a brute-force reference, with ties and filtering."""

import numpy as np
import pytest
import torch

from kg.ranking import AnswerIndex, filtered_ranks, rank_metrics


def _scorer(table: torch.Tensor):
    """Scores from a fixed (entity, relation, tail) table."""
    tails = lambda e, r, start, stop: table[e, r, start:stop].clone()  # noqa: E731
    triples = lambda e, r, t: table[e, r, t]  # noqa: E731
    return tails, triples


def _brute_force(table, queries, known):
    """Per query: count other entities strictly above / equal to the true one, skipping known answers."""
    opt, pes = [], []
    for e, r, t in queries:
        others = [x for x in range(table.shape[2]) if x != t and (e, r, x) not in known]
        s = table[e, r, t]
        above = sum(table[e, r, x] > s for x in others)
        equal = sum(table[e, r, x] == s for x in others)
        opt.append(int(above) + 1)
        pes.append(int(above) + int(equal) + 1)
    return np.array(opt), np.array(pes)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
def test_ranks_match_brute_force_with_ties_and_filtering(chunk_size):
    rng = np.random.default_rng(0)
    entities, relations = 7, 2
    table = torch.from_numpy(rng.integers(0, 4, (entities, relations, entities)).astype(np.float32))  # many ties
    triples = np.array([(e, r, t) for e in range(entities) for r in range(relations) for t in range(entities)
                        if rng.random() < 0.3], dtype=np.int64)
    known = {tuple(map(int, x)) for x in triples}
    index = AnswerIndex(triples, entities, relations)
    tails, scored = _scorer(table)
    opt, pes = filtered_ranks(tails, scored, triples, index, entities, batch_size=4, chunk_size=chunk_size)
    ref_opt, ref_pes = _brute_force(table, triples, known)
    assert np.array_equal(opt, ref_opt) and np.array_equal(pes, ref_pes)
    assert (pes > opt).any()  # the table has ties that matter


def test_a_constant_scorer_gets_the_mrr_that_realistic_ties_imply():
    entities = 50
    table = torch.zeros(entities, 1, entities)
    queries = np.array([(0, 0, t) for t in range(10)], dtype=np.int64)
    index = AnswerIndex(queries[:1], entities, 1)  # filter: answer 0 is known for (0, 0)
    opt, pes = filtered_ranks(*_scorer(table), queries, index, entities)
    assert (opt == 1).all()  # optimistic ties would give MRR 1
    realistic = (opt + pes) / 2
    assert realistic[0] == pytest.approx((1 + entities) / 2)
    assert realistic[1] == pytest.approx((1 + entities - 1) / 2)  # one other answer filtered out
    assert rank_metrics(realistic)["mrr"] < 0.1


def test_answer_index_is_a_deduplicated_csr():
    triples = np.array([(0, 1, 3), (0, 1, 2), (0, 1, 3), (2, 0, 1)], dtype=np.int64)
    index = AnswerIndex(triples, 4, 2)
    assert index.of(0, 1).tolist() == [2, 3] and index.of(2, 0).tolist() == [1] and index.of(1, 1).tolist() == []
    assert rank_metrics(np.array([1, 2, 4, 20])) == pytest.approx(
        {"mrr": (1 + 0.5 + 0.25 + 0.05) / 4, "hits@1": 0.25, "hits@3": 0.5, "hits@10": 0.75})
