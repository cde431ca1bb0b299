"""Synthetic inputs (the complete unlock): the stage's two passes checked against autograd (no Ray), and on
real stage actors a slowed stage 0 that does not slow stage 1, the input models fitting the real inputs of
their own batches, recovery from a killed stage, and bad flags."""

import copy
import json
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from dni_pipeline.cli import main
from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.core.run_folder import RunFolder
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.network import build_stages, parse_arch
from dni_pipeline.trainer.stage import Stage
from dni_pipeline.trainer.synthetic_gradients import SyntheticGradient
from dni_pipeline.trainer.synthetic_inputs import SyntheticInput
from dni_pipeline.trainer.training import train_pipeline


def _middle_stage(sent: list):
    """Stage 1 of 3 of fc16*3 on 12-feature data, with a cDNI SG and an input model, under the paper's rule."""
    torch.manual_seed(0)
    block = build_stages(parse_arch("fc16*3"), (12,), 5, 3, seed=1)[1]
    sg, inputs = SyntheticGradient((16,), [], 5), SyntheticInput((12,), (16,), [8])
    torch.nn.init.normal_(sg.net[-1].weight, std=0.3)
    stage = Stage(1, 3, block, "cdni", sent.append, lr=1e-2, lr_schedule="constant", total_steps=10, sg_model=sg,
                  sg_update="paper", input_model=inputs)
    return stage, copy.deepcopy(block), copy.deepcopy(sg), copy.deepcopy(inputs)


def test_synthetic_step_updates_on_the_input_models_estimate_and_keeps_the_running_statistics():
    sent = []
    stage, block, sg, inputs = _middle_stage(sent)
    x, labels = torch.randn(8, 12), torch.arange(8) % 5
    statistics = {k: v.clone() for k, v in stage.module.named_buffers()}
    stage.synthetic_step(0, x, labels)

    out = block(inputs.predict(x))
    (out * sg.predict(out.detach(), labels)).sum().backward()
    torch.optim.Adam(block.parameters(), lr=1e-2).step()
    assert sent == [] and stage.updates == 1  # nothing leaves: the real input has not come
    for mine, reference in zip(stage.module.parameters(), block.parameters()):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(v, statistics[k]) for k, v in block.named_buffers())  # as the reference moved its own
    assert all(torch.equal(v, statistics[k]) for k, v in stage.module.named_buffers())


def test_real_input_is_the_input_models_target_and_sends_the_real_output_and_the_sg_target():
    sent = []
    stage, block, sg, inputs = _middle_stage(sent)
    x, labels, h_real = torch.randn(8, 12), torch.arange(8) % 5, torch.randn(8, 16).relu()
    stage.real_input(0, 0, h_real.clone(), labels, x)

    # The input model took one Adam step on MSE(I(x), real input of the same batch).
    loss = F.mse_loss(inputs(x), h_real)
    loss.backward()
    torch.optim.Adam(inputs.parameters(), lr=1e-2).step()
    for mine, reference in zip(stage.input_model.parameters(), inputs.parameters()):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)
    # It sent on its output on the real input, and back d<out, M(out)>/dh; its block took one Adam step on
    # M(out) backpropagated from there, not counted as an update.
    h = h_real.clone().requires_grad_()
    out = block(h)
    (out * sg.predict(out.detach(), labels)).sum().backward()
    assert [m.kind for m in sent] == ["forward", "backward"]
    torch.testing.assert_close(sent[0].tensor, out.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sent[1].tensor, h.grad, rtol=1e-6, atol=1e-7)
    torch.optim.Adam(block.parameters(), lr=1e-2).step()
    for mine, reference in zip(stage.module.parameters(), block.parameters()):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-7)
    assert stage.updates == 0 and (0, 0) in stage.pending  # the SG's own target, for this output, comes later


def test_a_measured_real_input_gives_adam_the_gradient_of_the_measured_copy_of_the_weights():
    sent = []
    torch.manual_seed(0)
    block = build_stages(parse_arch("fc16*3"), (12,), 5, 3, seed=1)[1]
    sg = SyntheticGradient((16,), [], 5)
    torch.nn.init.normal_(sg.net[-1].weight, std=0.3)
    stage = Stage(1, 3, block, "cdni", sent.append, lr=1e-2, lr_schedule="constant", total_steps=10, sg_model=sg,
                  sg_update="gated", sg_trust_every=1, input_model=SyntheticInput((12,), (16,), [8]))  # every batch measured
    reference, reference_sg = copy.deepcopy(block), copy.deepcopy(sg)
    x, labels, h_real = torch.randn(8, 12), torch.arange(8) % 5, torch.randn(8, 16).relu()
    stage.real_input(0, 0, h_real.clone(), labels, x)

    out = reference(h_real)
    (out * reference_sg.predict(out.detach(), labels)).sum().backward()
    (beta1, _), state = stage.optimizer.param_groups[0]["betas"], stage.optimizer.state
    for mine, expected in zip(stage.module.parameters(), reference.parameters()):  # the trust is 0: no move yet
        torch.testing.assert_close(state[mine]["exp_avg"], (1 - beta1) * expected.grad, rtol=1e-5, atol=1e-7)
    assert (0, 0) in stage.measuring and stage.updates == 0


def test_the_head_steps_on_the_true_loss_of_its_real_input_and_sends_its_gradient():
    sent = []
    torch.manual_seed(0)
    head = build_stages(parse_arch("fc16*2"), (12,), 5, 3, seed=1)[2]
    stage = Stage(2, 3, head, "cdni", sent.append, lr=1e-2, lr_schedule="constant", total_steps=10,
                  input_model=SyntheticInput((12,), (16,), [8]))
    reference = copy.deepcopy(head)
    x, labels, h_real = torch.randn(8, 12), torch.arange(8) % 5, torch.randn(8, 16).relu()
    stage.real_input(0, 0, h_real.clone(), labels, x)

    h = h_real.clone().requires_grad_()
    F.cross_entropy(reference(h), labels).backward()
    torch.optim.Adam(reference.parameters(), lr=1e-2).step()
    for mine, expected in zip(stage.module.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, expected, rtol=1e-6, atol=1e-7)
    assert [m.kind for m in sent] == ["backward"] and stage.updates == 0
    torch.testing.assert_close(sent[0].tensor, h.grad, rtol=1e-6, atol=1e-7)


def _digits(**overrides) -> TrainConfig:
    values = dict(mode="cdni", synthetic_inputs=True, dataset="digits", arch="fcn3", stages=3, epochs=4, batch_size=64,
                  sg_probe_every=0)
    return TrainConfig(**{**values, **overrides}).validate()


@pytest.mark.slow
def test_a_slowed_stage_0_does_not_slow_the_updates_of_stage_1(ray_session):
    cfg = _digits(stages=2, max_steps=24, batch_size=32, stage_delay_ms=[60.0, 0.0], max_in_flight=24)  # one epoch
    result = train_pipeline(cfg, load_dataset("digits", None, seed=0), progress=False)
    updates = {s: sorted(e["end"] for e in result.events if e["stage"] == s and e["kind"] == "synthetic") for s in (0, 1)}
    assert len(updates[0]) == len(updates[1]) == 24
    stage1_done = updates[1][-1]
    # Stage 0 takes 60 ms a message (an update and a relay each step): by the time stage 1 has applied all 24
    # updates, stage 0 has applied under a third of its own.
    assert sum(t <= stage1_done for t in updates[0]) < 8
    first_real = min(e["start"] for e in result.events if e["stage"] == 1 and e["kind"] == "forward")
    assert sum(t <= first_real for t in updates[1]) >= 1  # stage 1 updated before its first real input arrived


@pytest.mark.slow
def test_input_models_fit_the_real_inputs_of_their_own_batches_and_the_run_learns(ray_session):
    result = train_pipeline(_digits(), load_dataset("digits", None, seed=0), progress=False)
    last = [s for s in result.steps if "input_r2" in s][-10:]
    for stage in (1, 2):  # a batch paired with another's activations would fit at R^2 <= 0
        assert sum(s["input_r2"][stage] for s in last) / len(last) > 0.3  # 0.56-0.68 in two runs
    assert result.summary["test_accuracy"] > 0.8  # digits, 4 epochs, 10 classes: 0.90 in two runs


@pytest.mark.slow
def test_a_killed_stage_with_an_input_model_recovers_and_every_step_is_applied_once(ray_session, tmp_path):
    cfg = _digits(epochs=10, checkpoint_every=20)
    manifest = tmp_path / "run" / RunFolder.MANIFEST

    def kill_stage_1_after_step_40():
        while not manifest.exists() or json.loads(manifest.read_text())["step"] < 40:
            time.sleep(0.02)
        name = next(n for n in ray_session.util.list_named_actors() if n.endswith("-stage1"))
        ray_session.kill(ray_session.get_actor(name), no_restart=False)

    threading.Thread(target=kill_stage_1_after_step_40, daemon=True).start()
    summary = train_pipeline(cfg, load_dataset("digits", None, seed=0), RunFolder(tmp_path / "run"), progress=False).summary
    (recovery,) = summary["recoveries"]
    assert recovery["stage"] == 1 and 40 <= recovery["rolled_back_to"]
    assert summary["stage_updates"] == [summary["planned_steps"]] * 3
    assert summary["test_accuracy"] > 0.8


@pytest.mark.parametrize("flags, message", [
    (["--mode", "backprop"], "--synthetic-inputs needs synthetic gradients"),
    (["--mode", "dgl"], "--synthetic-inputs needs synthetic gradients"),
    (["--stages", "1"], "needs at least 2 stages"),
    (["--sg-off"], "run the ablation without --synthetic-inputs"),
    (["--stages", "5"], "use at most 4 stages"),
])
def test_bad_synthetic_input_flags_are_refused_in_one_line(tmp_path, capsys, flags, message):
    args = ["train", "--dataset", "digits", "--arch", "fcn3", "--mode", "cdni", "--synthetic-inputs",
            "--out", str(tmp_path / "r")]
    assert main(args + flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()
