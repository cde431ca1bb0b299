"""The peers in the bench: one PyTorch process, and torch.distributed.pipelining's GPipe, 1F1B and
interleaved zero-bubble schedules on gloo, train exactly what the stage actors train in the matching
locked mode; with link latency every message of a torch schedule is delayed as the actors' are."""

import dataclasses

import pytest

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.errors import UserError
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.peers import check_peer, train_peer
from dni_pipeline.trainer.training import train_pipeline


@pytest.mark.slow
@pytest.mark.parametrize("peer, mode", [("single", "backprop"), ("torch-gpipe", "gpipe"), ("torch-1f1b", "1f1b"),
                                        ("torch-zb", "gpipe")])
def test_peer_trains_the_same_network_as_the_matching_locked_mode(ray_session, peer, mode):
    """Same seed, data order, Adam and cosine schedule, same micro-batches: after 12 steps the test loss
    and accuracy agree to float rounding (threads and summation order differ). torch-zb trains the same
    model cut into four stages, two per process."""
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
    ("torch-1f1b", {"stages": 4, "micro_batches": 2}, "use --micro-batches 4 or more"),
    ("warp", {}, "unknown peer mode 'warp'"),
    ("torch-zb", {"split": [3]}, "drop --split for its row"),
    ("torch-zb", {"micro_batches": 5, "batch_size": 60}, "a multiple of 2"),
])
def test_peer_refuses_what_it_cannot_run(peer, changes, message):
    cfg = dataclasses.replace(TrainConfig(dataset="synthetic", arch="fc32*4", stages=2, batch_size=64), **changes)
    with pytest.raises(UserError, match=message):
        check_peer(cfg, peer)


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["torch-gpipe", "torch-zb"])
def test_link_latency_delays_every_message_of_a_torch_schedule(ray_session, peer):
    """At 40 ms each send leaves no sooner than 40 ms after the schedule made it (and not much later), for
    every send of 3 steps of 4 micro-batches: activations one way and gradients back, per stage boundary;
    the same run trains to the same weights as without the delay."""
    data = load_dataset("synthetic", None, seed=0)
    cfg = TrainConfig(mode="backprop", dataset="synthetic", arch="fc32*4", stages=2, batch_size=64, micro_batches=4,
                      lr=3e-3, max_steps=3, eval_every=3).validate()
    plain = train_peer(cfg, peer, data).summary
    delayed = train_peer(dataclasses.replace(cfg, link_latency_ms=40.0), peer, data).summary
    boundaries = 3 if peer == "torch-zb" else 1  # four stages on two processes: 0 | 1 | 2 | 3
    delays = delayed["send_delay_ms"]
    assert delays["messages"] >= 2 * boundaries * 4 * 3 and plain["send_delay_ms"] is None
    assert delays["min"] >= 40.0 and delays["median"] < 60.0
    assert delayed["link_latency_ms"] == 40.0
    assert delayed["test_loss"] == pytest.approx(plain["test_loss"], rel=1e-6)
    assert delayed["train_seconds"] > plain["train_seconds"]
