"""The network as stages: cutting a Sequential, the whole model's state dict, the shape probe (no Ray)."""

import pytest
import torch
from torch import nn

from dni_pipeline.core.errors import UserError
from dni_pipeline.trainer.model import as_network, balanced_starts


def test_balanced_starts_minimise_the_largest_stage():
    assert balanced_starts([1, 1, 1, 1], 2) == [2]
    assert balanced_starts([10, 1, 1, 1, 1, 10], 3) == [1, 5]  # the two heavy children alone
    assert balanced_starts([3, 3, 3], 3) == [1, 2]
    assert balanced_starts([5], 1) == []


def test_a_cut_sequential_gives_back_the_whole_models_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    network = as_network(model, 3, split=[2, 4])
    stages = network.build_all()
    assert [len(s) for s in stages] == [2, 2, 1]
    merged = network.whole_state_dict([s.state_dict() for s in stages])
    assert merged.keys() == model.state_dict().keys()
    assert all(torch.equal(merged[k], v) for k, v in model.state_dict().items())


def test_a_factory_builds_each_stage_from_the_seed():
    network = as_network(lambda i, k: nn.Linear(4, 4), 2, seed=3)
    a, b = network.build(1), network.build(1)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, network.build(0).weight)
    assert not torch.equal(a.weight, as_network(lambda i, k: nn.Linear(4, 4), 2, seed=4).build(1).weight)


def test_the_probe_finds_every_boundary_shape_and_moves_no_statistic():
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 5))
    network = as_network(model, 2, split=[2])
    outputs = network.probe(torch.rand(4, 1, 4, 4))
    assert [tuple(o.shape) for o in outputs] == [(4, 3, 4, 4), (4, 5)]
    assert network.boundaries == [((1, 4, 4), torch.float32), ((3, 4, 4), torch.float32), ((5,), torch.float32)]
    assert torch.equal(model[1].running_mean, torch.zeros(3)) and model.training


@pytest.mark.parametrize("model, stages, message", [
    ("not a model", 2, "a model of type str cannot be split"),
    ([nn.Linear(2, 2)], 2, "1 stage modules given for 2 stages"),
    (nn.Sequential(nn.Linear(2, 2), nn.ReLU()), 2, None),
])
def test_models_that_cannot_be_cut_are_refused(model, stages, message):
    if message is None:
        assert len(as_network(model, stages).build_all()) == 2
        return
    with pytest.raises(UserError, match=message):
        as_network(model, stages)
