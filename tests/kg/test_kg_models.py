"""KG models against their scoring formulas written out directly, and the losses."""

import math

import numpy as np
import pytest
import torch

from kg.models import MODELS, build_model
from kg.training import KGTrainConfig, TrainingLoss, make_optimizer, train_epoch

ENTITIES, RELATIONS, DIM = 9, 3, 4


def _model(name, gamma=5.0, p_norm=1):
    return build_model(name, ENTITIES, RELATIONS, dim=DIM, init_scale=0.5, gamma=gamma, p_norm=p_norm, seed=1)


def _reference_score(name, model, h, r, t):
    """s(h, r, t) straight from each paper's formula, in complex arithmetic where it applies."""
    e, w = model.entity.weight, model.relation.weight
    if name == "distmult":
        return (e[h] * w[r] * e[t]).sum()
    if name == "transe":
        return model.gamma - (e[h] + w[r] - e[t]).norm(p=model.p_norm)
    as_complex = lambda x: torch.complex(*x.chunk(2))  # noqa: E731
    if name == "complex":
        return (as_complex(e[h]) * as_complex(w[r]) * as_complex(e[t]).conj()).sum().real
    rotation = torch.polar(torch.ones(DIM), w[r])
    return model.gamma - (as_complex(e[h]) * rotation - as_complex(e[t])).abs().sum()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_scoring_path_matches_the_formula(name):
    model = _model(name)
    triples = torch.tensor([(h, r, t) for h in range(ENTITIES) for r in range(2 * RELATIONS) for t in range(ENTITIES)])
    h, r, t = triples.T
    with torch.no_grad():
        expected = torch.stack([_reference_score(name, model, *x) for x in triples])
        assert torch.allclose(model.score_triples(h, r, t), expected, atol=1e-5)
        table = model.score_tails(h, r)  # every query against every entity
        assert torch.allclose(table[torch.arange(len(t)), t], expected, atol=1e-5)
        assert torch.allclose(model.score_tails(h, r, 2, 7), table[:, 2:7], atol=1e-6)  # a chunk of candidates
        candidates = torch.stack([t, (t + 1) % ENTITIES], 1)
        assert torch.allclose(model.score_candidates(h, r, candidates)[:, 0], expected, atol=1e-5)


def test_transe_l2_and_reciprocal_relations_are_separate_embeddings():
    model = _model("transe", p_norm=2)
    with torch.no_grad():
        assert torch.allclose(model.score_triples(torch.tensor([1]), torch.tensor([0]), torch.tensor([2])),
                              _reference_score("transe", model, 1, 0, 2)[None], atol=1e-5)
    assert model.relation.num_embeddings == 2 * RELATIONS


def test_complex_n3_factors_are_moduli():
    model = _model("complex")
    h, r, t = torch.tensor([1]), torch.tensor([2]), torch.tensor([3])
    e = model.entity.weight[1]
    expected = torch.complex(*e.chunk(2)).abs()
    assert torch.allclose(model.factors(model.entity(h), model.relation(r), model.entity(t))[0][0], expected)


def test_self_adversarial_loss_matches_its_formula():
    model = _model("rotate")
    cfg = KGTrainConfig(model="rotate", negatives=5, adversarial_temperature=0.5)
    batch = torch.tensor([[0, 1, 2], [3, 4, 5]])
    negatives = torch.randint(ENTITIES, (2, 5), generator=torch.Generator().manual_seed(3))
    loss = TrainingLoss(cfg, model)(batch, negatives, scale=1 / len(batch))
    with torch.no_grad():
        pos = torch.stack([_reference_score("rotate", model, *x) for x in batch])
        neg = torch.stack([torch.stack([_reference_score("rotate", model, b[0], b[1], n) for n in row])
                           for b, row in zip(batch, negatives)])
        p = torch.softmax(0.5 * neg, 1)
        expected = (-torch.nn.functional.logsigmoid(pos) - (p * torch.nn.functional.logsigmoid(-neg)).sum(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_an_epoch_is_reproducible_from_seed_and_epoch():
    triples = np.array([(h, r, (h + r) % ENTITIES) for h in range(ENTITIES) for r in range(2 * RELATIONS)])
    weights = []
    for _ in range(2):
        cfg = KGTrainConfig(model="complex", dim=DIM, batch_size=7, n3=0.01)
        model = _model("complex")
        optimizer = make_optimizer(cfg, model)
        losses = [train_epoch(cfg, TrainingLoss(cfg, model), optimizer, triples, epoch) for epoch in range(2)]
        assert all(math.isfinite(x) for x in losses)
        weights.append(model.entity.weight.detach().clone())
    assert torch.equal(*weights)


def test_bf16_score_matrices_give_the_float32_loss_and_gradient_to_bf16_precision():
    """bf16 keeps 8 bits of mantissa: scores, the 1vsall loss and its gradient agree with float32 to
    about 1%, and the weights and their gradients stay float32."""
    model = build_model("complex", 500, RELATIONS, dim=64, init_scale=0.3, gamma=0.0, p_norm=1, seed=2)
    batch = torch.tensor([[h % 500, h % (2 * RELATIONS), (7 * h) % 500] for h in range(64)])
    values, grads = {}, {}
    for precision in ("fp32", "bf16"):
        cfg = KGTrainConfig(model="complex", n3=0.01, precision=precision)
        model.zero_grad()
        loss = TrainingLoss(cfg, model)(batch, None, scale=1 / len(batch))
        loss.backward()
        values[precision], grads[precision] = loss.item(), model.entity.weight.grad.clone()
    assert values["bf16"] == pytest.approx(values["fp32"], rel=1e-2)
    assert grads["bf16"].dtype == torch.float32
    assert (grads["bf16"] - grads["fp32"]).norm() <= 0.02 * grads["fp32"].norm()
