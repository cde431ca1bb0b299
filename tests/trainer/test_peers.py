"""The peers in the bench: one PyTorch process, and torch.distributed.pipelining's GPipe and 1F1B on
gloo, train exactly what the stage actors train in the matching locked mode."""

import dataclasses

import pytest

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.errors import UserError
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.peers import check_peer, train_peer
from dni_pipeline.trainer.training import train_pipeline


@pytest.mark.slow
@pytest.mark.parametrize("peer, mode", [("single", "backprop"), ("torch-gpipe", "gpipe"), ("torch-1f1b", "1f1b")])
def test_peer_trains_the_same_network_as_the_matching_locked_mode(ray_session, peer, mode):
    """Same seed, data order, Adam and cosine schedule, same micro-batches: after 12 steps the test loss
    and accuracy agree to float rounding (threads and summation order differ)."""
    data = load_dataset("synthetic", None, seed=0)
    cfg = TrainConfig(mode=mode, dataset="synthetic", arch="fc32*4", stages=2, batch_size=64, micro_batches=4,
                      lr=3e-3, max_steps=12, eval_every=6).validate()
    ours = train_pipeline(cfg, data, progress=False)
    theirs = train_peer(dataclasses.replace(cfg, mode="backprop"), peer, data)
    assert [e["step"] for e in theirs.evals] == [6, 12]
    assert theirs.summary["steps"] == ours.summary["steps"] == 12
    assert theirs.summary["test_loss"] == pytest.approx(ours.summary["test_loss"], rel=1e-4)
    assert theirs.summary["test_accuracy"] == pytest.approx(ours.summary["test_accuracy"], abs=0.002)
    assert theirs.evals[1]["test_loss"] < theirs.evals[0]["test_loss"]  # it trained


@pytest.mark.parametrize("peer, changes, message", [
    ("torch-gpipe", {"batch_size": 66}, "is not a multiple of --micro-batches 4"),
    ("torch-1f1b", {"stages": 1}, "needs at least 2 stages"),
    ("warp", {}, "unknown peer mode 'warp'"),
])
def test_peer_refuses_what_it_cannot_run(peer, changes, message):
    cfg = dataclasses.replace(TrainConfig(dataset="synthetic", arch="fc32*4", stages=2, batch_size=64), **changes)
    with pytest.raises(UserError, match=message):
        check_peer(cfg, peer)
