"""Emulated devices: each call waits what was asked (recorded, not timed), tensors keep their real
shapes, and `--model emulated` runs on stage actors and torch peers like any model."""

import importlib
from types import SimpleNamespace

import pytest
import torch

from dni_pipeline.core.datasets import make_synthetic
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.data import describe
from dni_pipeline.trainer.models import network_from_config
from dni_pipeline.trainer.models.emulated import EmulatedBlock, emulated
from dni_pipeline.trainer.peers import peer_network, train_peer
from dni_pipeline.trainer.training import train_pipeline

emulated_module = importlib.import_module("dni_pipeline.trainer.models.emulated")  # the name is also the function's


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """Every wait an emulated call asks for, in milliseconds, instead of waiting."""
    asked: list[float] = []
    monkeypatch.setattr(emulated_module, "time", SimpleNamespace(sleep=lambda s: asked.append(round(1000 * s, 6))))
    return asked


def test_a_block_waits_its_rows_share_and_splits_its_backward(waits):
    block = EmulatedBlock((8, 5), forward_ms=40, backward_ms=80, batch_size=64, input_grad_share=0.25,
                          fixed_share=0.2)
    x = torch.randn(16, 8, 5, requires_grad=True)
    out = block(x)
    assert out.shape == (16, 8, 5) and waits == [pytest.approx(40 * (0.2 + 0.8 / 4))]
    waits.clear()
    (grad_x,) = torch.autograd.grad(out, [x], torch.ones_like(out), retain_graph=True)  # zero bubble's B pass
    assert grad_x.shape == x.shape and waits == [pytest.approx(80 * 0.25 * 0.4)]
    waits.clear()
    torch.autograd.grad(out, [block.weight], torch.ones_like(out))  # ... and its W pass
    assert waits == [pytest.approx(80 * 0.75 * 0.4)]


def test_a_block_whose_input_needs_no_gradient_waits_the_whole_backward_for_its_weights(waits):
    block = EmulatedBlock((4,), forward_ms=10, backward_ms=30, batch_size=8)
    block(torch.randint(0, 9, (8, 6))).sum().backward()  # token ids, as a first stage gets them
    assert waits == [10, 30]


def test_evaluation_does_not_wait(waits):
    block = EmulatedBlock((4,), forward_ms=10, backward_ms=30, batch_size=8).eval()
    with torch.no_grad():
        block(torch.randn(8, 3))
    assert waits == [0.0]


def test_the_model_has_two_half_blocks_a_stage_and_logits_per_position_for_a_sequence(waits):
    model = emulated(num_classes=7, num_stages=3, batch_size=4, shape=[6, 16], forward_ms=[10, 20, 30])
    assert len(model) == 6 and model(torch.randn(4, 6, 16)).shape == (4, 6, 7)
    assert waits == [5, 5, 10, 10, 15, 15]
    with pytest.raises(ValueError, match="one per stage"):
        emulated(num_classes=7, num_stages=3, batch_size=4, forward_ms=[10, 20])
    with pytest.raises(ValueError, match=r"sg_backward_ms is a number of milliseconds, 0 or more \(got -1\)"):
        emulated(num_classes=7, num_stages=3, batch_size=4, sg_backward_ms=-1)
    with pytest.raises(ValueError, match=r"forward_ms is a number of milliseconds, 0 or more \(got 'fast'\)"):
        emulated(num_classes=7, num_stages=3, batch_size=4, forward_ms=[10, "fast", 30])
    with pytest.raises(ValueError, match=r"fixed_share is a share of a call's time, in \[0, 1\] \(got 1.5\)"):
        emulated(num_classes=7, num_stages=3, batch_size=4, fixed_share=1.5)


def test_the_config_path_cuts_it_per_stage_and_takes_its_sg_and_head_factories(waits):
    data = describe(make_synthetic(0, num_train=256, num_test=64))
    cfg = TrainConfig(model="emulated", model_options={"forward_ms": 4, "sg_forward_ms": 2, "aux_forward_ms": 1},
                      dataset="synthetic", stages=4, batch_size=32).validate()
    network = network_from_config(cfg, data)
    network.prepare(data, "cdni")
    assert network.starts == [2, 4, 6] and network.output_shape(0) == (1024,)
    waits.clear()
    sg = network.build_synthetic_gradient(0, [], conditioned=True)
    assert sg.predict(torch.zeros(32, 1024), torch.zeros(32, dtype=torch.long)).shape == (32, 1024)
    network.build_aux_head(1, [])(torch.zeros(16, 1024))
    assert waits == [2, 0.5]  # the SG's whole batch; the head's half of one
    assert peer_network(cfg, "torch-zb", data, network).num_stages == 8


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["gpipe", "cdni", "dgl"])
def test_emulated_stages_train_on_actors_and_wait_what_was_asked(ray_session, mode):
    """Real waits on real actors: stage 0's busy time holds at least its forwards' and backwards' waits."""
    data = make_synthetic(0, num_train=512, num_test=64)
    cfg = TrainConfig(mode=mode, model="emulated", model_options={"forward_ms": 30, "backward_ms": 30},
                      dataset="synthetic", stages=3, batch_size=64, micro_batches=2, max_steps=6, eval_every=6,
                      sg_probe_every=0, cpus_per_stage=0.5).validate()
    result = train_pipeline(cfg, data, progress=False)
    assert result.summary["steps"] == 6 and 0 < result.summary["host_cpu_busy"] <= 1
    busy = sum(e["end"] - e["start"] for e in result.events if e["kind"] in ("forward", "backward") and e["stage"] == 0)
    assert busy >= 6 * 0.060


@pytest.mark.slow
def test_the_torch_peers_train_it(ray_session):
    data = make_synthetic(0, num_train=512, num_test=64)
    cfg = TrainConfig(mode="backprop", model="emulated", model_options={"forward_ms": 5, "backward_ms": 5},
                      dataset="synthetic", stages=2, batch_size=64, micro_batches=2, max_steps=4, eval_every=4,
                      cpus_per_stage=0.5).validate()
    for peer in ("torch-zb", "single"):
        summary = train_peer(cfg, peer, data).summary
        assert summary["steps"] == 4 and 0 < summary["host_cpu_busy"] <= 1
