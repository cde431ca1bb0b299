"""The pipeline on real Ray actors (one local Ray per session)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.trainer.checkpoints import CheckpointStore
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.data import batch_order
from dni_pipeline.trainer.driver import Driver
from dni_pipeline.trainer.network import build_stages, parse_arch
from dni_pipeline.trainer.stage import learning_rate
from dni_pipeline.trainer.training import train_pipeline


def _reference_training(cfg: TrainConfig, data) -> list[dict]:
    """Single-process PyTorch: the whole network, one Adam, the same seed, schedule and data order,
    gradients accumulated over the same micro-batches."""
    torch.set_num_threads(1)
    stages = build_stages(parse_arch(cfg.arch), data.input_shape, data.num_classes, cfg.stages, cfg.seed)
    model = torch.nn.Sequential(*stages)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = len(data.x_train) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    for epoch in range(cfg.epochs):
        for i, idx in enumerate(batch_order(len(data.x_train), cfg.batch_size, epoch, cfg.seed)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg.lr, cfg.lr_schedule, epoch * steps_per_epoch + i, total)
            optimizer.zero_grad()
            for part in np.array_split(idx, cfg.resolved_micro_batches()):
                x, y = torch.from_numpy(data.x_train[part]), torch.from_numpy(data.y_train[part])
                (F.cross_entropy(model(x), y) * len(part) / len(idx)).backward()
            optimizer.step()
    return [s.state_dict() for s in stages]


@pytest.mark.slow
@pytest.mark.parametrize("mode, stages", [("backprop", 3), ("gpipe", 3), ("1f1b", 3), ("1f1b", 4)])
def test_locked_modes_on_actors_equal_single_process_pytorch(ray_session, mode, stages, tmp_path):
    """Stage 4 of 4 holds the head alone (every hidden layer on its own stage)."""
    cfg = TrainConfig(mode=mode, dataset="synthetic", arch="fc32*3", stages=stages, epochs=2, lr=3e-3, micro_batches=3,
                      checkpoint_dir=str(tmp_path)).validate()  # 256 = 86 + 85 + 85: unequal micro-batches on purpose
    data = load_dataset("synthetic", None)
    driver = Driver(cfg, data)
    try:
        progress = type("Bar", (), {"n": 0, "update": lambda self, k: None})()
        driver.train_until(driver.total_steps, progress)
        store = CheckpointStore(str(tmp_path))  # the weights as the stages save them
        states = [store.load(f["file"], f["sha256"])["module"] for f in driver.save()["stages"]]
    finally:
        driver.close()
    expected = _reference_training(cfg, data)
    assert len(states) == stages
    for got, want in zip(states, expected):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=0, atol=1e-5, err_msg=name)
    assert driver.total_steps == 32


def _update_times(result, stage: int, edge: str) -> list[float]:
    """Start or end times of the events in which `stage` applied an optimizer update, in order."""
    return sorted(e[edge] for e in result.events if e["stage"] == stage and e["updates"])


@pytest.mark.slow
@pytest.mark.parametrize("mode, sg_update", [("dni", "gated"), ("dni", "corrected"), ("backprop", None)])
def test_slow_last_stage_does_not_hold_back_stage_0_in_dni(ray_session, mode, sg_update):
    """The last stage sleeps 250 ms before each step's work. In dni under the gated rule, stage 0 has applied a
    whole window of updates before the last stage finishes its first; under the corrected rule (the default), which
    computes a batch only once the true gradients of those d + 1 steps back are applied (d = K - 1 = 2 for stage 0),
    d + 1 of them; in locked backprop every stage-0 update starts only after the last stage has slept and sent that
    step's gradient."""
    window, delay = 4, 0.25
    cfg = TrainConfig(mode=mode, dataset="synthetic", arch="fc32*3", stages=3, epochs=1, batch_size=512,
                      sg_hidden=[32], max_in_flight=window, stage_delay_ms=[0, 0, 1000 * delay],
                      sg_update=sg_update).validate()
    result = train_pipeline(cfg, load_dataset("synthetic", None), progress=False)
    assert len(_update_times(result, 0, "end")) == len(_update_times(result, 2, "end")) == 8
    if mode == "dni":
        ahead = window if sg_update == "gated" else cfg.stage_delay(0) + 1
        assert _update_times(result, 0, "end")[ahead - 1] < _update_times(result, 2, "end")[0]
        if sg_update == "corrected":  # and no further
            assert _update_times(result, 0, "end")[ahead] > _update_times(result, 2, "end")[0]
    else:
        first, last = _update_times(result, 0, "start"), _update_times(result, 2, "start")
        assert all(a > b + delay for a, b in zip(first, last))


@pytest.mark.slow
def test_dni_and_cdni_learn_and_beat_disabled_synthetic_gradients(ray_session):
    data = load_dataset("digits", None)
    accuracy = {}
    for name, mode, sg_off in [("dni", "dni", False), ("cdni", "cdni", False), ("dgl", "dgl", False),
                               ("off", "dni", True)]:
        cfg = TrainConfig(mode=mode, dataset="digits", arch="fc32*3", stages=3, epochs=8, batch_size=64,
                          sg_hidden=[128] if mode == "dni" else None, sg_off=sg_off).validate()
        result = train_pipeline(cfg, data, progress=False)
        accuracy[name] = result.summary["test_accuracy"]
        assert len(result.summary["placement"]) == 3
    assert min(accuracy["dni"], accuracy["cdni"], accuracy["dgl"]) > 0.6, accuracy  # chance is 0.1
    assert accuracy["dni"] > accuracy["off"] + 0.05, accuracy
    assert accuracy["cdni"] > accuracy["off"] + 0.05, accuracy


def _median_transit(result) -> float:
    return float(np.median([e["transit"] for e in result.events if e["kind"] in ("forward", "backward")
                            and e["transit"] is not None]))


@pytest.mark.slow
def test_link_latency_delays_every_message_by_the_amount_asked(ray_session):
    """Locked backprop leaves the receiver idle, so a message's transit is the link's delay itself."""
    data = load_dataset("synthetic", None)
    transit = {}
    for latency in (0.0, 80.0):
        cfg = TrainConfig(mode="backprop", dataset="synthetic", arch="fc16*2", stages=2, epochs=1,
                          link_latency_ms=latency).validate()
        transit[latency] = _median_transit(train_pipeline(cfg, data, progress=False))
    assert 0.080 <= transit[80.0] < 0.080 + 0.050, transit
    assert transit[80.0] - transit[0.0] == pytest.approx(0.080, abs=0.020), transit


class _FailsInTraining(torch.nn.Linear):
    """Runs in the shape probe (eval mode), fails on every training forward."""

    def forward(self, x):
        if self.training:
            raise RuntimeError("this layer cannot train")
        return super().forward(x)


@pytest.mark.slow
def test_a_failing_stage_stops_the_run_naming_the_stage_and_step(ray_session):
    from dni_pipeline.trainer.model import as_network
    from dni_pipeline.trainer.recovery import PipelineError

    # Every step in flight fails at stage 1, and the ledger (an async actor) does not order their
    # reports, so the step named is one of those in flight. No SG probes: they would fail too.
    cfg = TrainConfig(mode="dni", dataset="synthetic", stages=2, epochs=1, sg_hidden=[8], sg_probe_every=0,
                      max_in_flight=4).validate()
    network = as_network([torch.nn.Linear(32, 16), _FailsInTraining(16, 10)], 2)
    with pytest.raises(PipelineError, match="(?s)stage 1 failed on forward of step [0-3]:.*this layer cannot train"):
        train_pipeline(cfg, load_dataset("synthetic", None), progress=False, network=network)


def test_batch_order_is_seeded_and_drops_the_partial_batch():
    a = batch_order(1000, 64, epoch=0, seed=1)
    assert len(a) == 15 and all(len(b) == 64 for b in a)
    assert len(np.unique(np.concatenate(a))) == 960
    assert all(np.array_equal(x, y) for x, y in zip(a, batch_order(1000, 64, epoch=0, seed=1)))
    assert not np.array_equal(a[0], batch_order(1000, 64, epoch=1, seed=1)[0])
