"""Any network, any data: the user's own models through the Python API and the command line, on real
stage actors; the built-in transformer and residual CNN trained exactly by the locked modes."""

import copy
import json
import threading
import time

import numpy as np
import pytest
import torch
import user_models
from test_faults import _manifest_step, _stage_actor
from torch import nn

import dni_pipeline
from dni_pipeline.cli import main
from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.trainer.data import batch_order
from dni_pipeline.trainer.stage import learning_rate

STEPS, BATCH, MICRO, LR = 5, 64, 2, 3e-3


def _single_process(model: nn.Module, data: dict, mode: str) -> dict:
    """One PyTorch process: the whole model, one Adam, the run's data order, learning-rate schedule and
    micro-batches (their losses weighted to the mini-batch mean, as the stages weight them)."""
    torch.set_num_threads(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    order = batch_order(len(data["x_train"]), BATCH, 0, 0)
    for step in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(LR, "cosine", step, STEPS)
        optimizer.zero_grad()
        for part in np.array_split(order[step], MICRO if mode != "backprop" else 1):
            x, y = torch.from_numpy(data["x_train"][part]), torch.from_numpy(data["y_train"][part])
            out = model(x)
            (nn.functional.cross_entropy(out.flatten(0, -2), y.flatten()) * len(part) / BATCH).backward()
        optimizer.step()
    return model.state_dict()


def _gpt_and_text():
    data = user_models.markov_text_data()
    torch.manual_seed(0)
    return dni_pipeline.gpt((16,), 12, layers=3, heads=2, width=16), data


def _resnet_and_digits():
    digits = load_dataset("digits", None)
    data = {"x_train": digits.x_train, "y_train": digits.y_train, "x_test": digits.x_test, "y_test": digits.y_test}
    torch.manual_seed(0)
    return dni_pipeline.resnet((1, 8, 8), 10, widths=(4, 8)), data


MODELS = {"gpt": _gpt_and_text, "resnet": _resnet_and_digits}
EXACT = [(m, k, mode) for m in MODELS for k in (2, 3) for mode in ("backprop", "gpipe", "1f1b")]


@pytest.mark.slow
@pytest.mark.parametrize("family, stages, mode", EXACT)
def test_locked_modes_on_the_transformer_and_resnet_equal_single_process_pytorch(ray_session, family, stages, mode):
    model, data = MODELS[family]()
    result = dni_pipeline.train(copy.deepcopy(model), data, mode=mode, stages=stages, max_steps=STEPS,
                                batch_size=BATCH, micro_batches=MICRO, lr=LR, progress=False)
    expected = _single_process(model, data, mode)
    got = result.state_dict()
    assert got.keys() == expected.keys()  # the stages' weights come back keyed as the whole model's
    for name, want in expected.items():
        np.testing.assert_allclose(got[name].numpy(), want.numpy(), rtol=0, atol=1e-5, err_msg=name)
    assert result.summary["steps"] == STEPS and result.summary["stage_updates"] == [STEPS] * stages


@pytest.mark.slow
def test_a_model_the_user_defines_trains_and_its_state_dict_gives_the_reported_metric(ray_session):
    (x_train, y_train), (x_test, y_test) = user_models.teacher_data()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 64), nn.Tanh(), nn.Linear(64, 64), nn.LayerNorm(64), nn.ReLU(),
                          nn.Linear(64, 4))
    before = user_models.evaluate(model, x_test, y_test)
    result = dni_pipeline.train(model, ((torch.from_numpy(x_train), torch.from_numpy(y_train)), (x_test, y_test)),
                                mode="cdni", stages=2, split=[2], epochs=3, batch_size=64, lr=3e-3, progress=False)
    assert result.summary["test_accuracy"] > max(0.6, before["accuracy"] + 0.2)
    trained = copy.deepcopy(model)
    trained.load_state_dict(result.state_dict())  # strict: every key of the whole model, nothing else
    after = user_models.evaluate(trained, x_test, y_test)
    assert after["loss"] == pytest.approx(result.summary["test_loss"], rel=1e-5)
    assert after["accuracy"] == pytest.approx(result.summary["test_accuracy"], abs=1e-9)
    assert user_models.evaluate(model, x_test, y_test) == before  # the user's own module is left as it was


@pytest.mark.slow
def test_a_language_model_reports_bits_per_token_and_its_state_dict_loads(ray_session):
    model, data = _gpt_and_text()
    result = dni_pipeline.train(model, data, mode="dni", stages=2, epochs=1, batch_size=32, lr=3e-3, progress=False)
    summary = result.summary
    assert summary["test_bits"] == pytest.approx(summary["test_loss"] / np.log(2))
    assert summary["test_bits"] < np.log2(12)  # below a uniform guess over the 12 characters
    assert summary["tokens_per_sec"] == pytest.approx(16 * summary["samples_per_sec"], rel=1e-3)  # 16 per window
    trained = copy.deepcopy(model)
    trained.load_state_dict(result.state_dict())
    after = user_models.evaluate(trained, data["x_test"], data["y_test"])
    assert after["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_a_users_input_model_gives_a_language_model_synthetic_inputs(ray_session):
    """Token ids have no default input model (refused in one line); the user's factory fn(x_shape, h_shape) makes
    the complete unlock run, its model called on each batch's tokens and fitted to stage 1's real input."""
    model, data = _gpt_and_text()
    options = {"mode": "dni", "stages": 2, "epochs": 1, "batch_size": 32, "lr": 3e-3, "synthetic_inputs": True,
               "progress": False}
    with pytest.raises(dni_pipeline.UserError, match=r"stage 1: .*token ids"):
        dni_pipeline.train(copy.deepcopy(model), data, **options)
    result = dni_pipeline.train(model, data, synthetic_input=user_models.TokenInputs, **options)
    last = [s["input_r2"][1] for s in result.steps if "input_r2" in s][-10:]
    assert len(last) == 10 and sum(last) / 10 > 0.3  # 0.9 in one run; a batch paired with another's inputs fits at <= 0
    assert result.summary["stage_updates"] == [result.summary["planned_steps"]] * 2
    assert result.summary["test_bits"] < np.log2(12)


@pytest.mark.slow
def test_the_api_and_the_command_line_give_the_same_summary(ray_session, tmp_path):
    torch.manual_seed(0)
    model = user_models.small_mlp((12,), 4)
    options = {"mode": "gpipe", "stages": 2, "max_steps": 12, "batch_size": 64, "seed": 0}
    api = dni_pipeline.train(model, user_models.teacher_data, progress=False, **options).summary
    config = tmp_path / "run.yaml"
    config.write_text("model: user_models:small_mlp\nmodel_options: {width: 32}\ndata: user_models:teacher_data\n"
                      "data_options: {samples: 2048}\n")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    assert main(["train", "--config", str(config), *flags, "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    cli = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("test_loss", "test_accuracy"):
        assert cli[key] == pytest.approx(api[key], rel=1e-6), key
    assert (cli["steps"], cli["stage_updates"], cli["dataset"]) == (api["steps"], api["stage_updates"], "teacher_data")
    weights = torch.load(tmp_path / "run" / "model.pt")
    assert weights.keys() == model.state_dict().keys()


def _bad(tmp_path, capsys, **kwargs) -> str:
    """The API's error message for a bad input; no run folder may be left."""
    model = kwargs.pop("model")
    data = kwargs.pop("data", user_models.teacher_data)
    with pytest.raises(dni_pipeline.UserError) as error:
        dni_pipeline.train(model, data, out=str(tmp_path / "run"), progress=False, **{"stages": 2, **kwargs})
    assert not (tmp_path / "run").exists()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_models_and_data_are_one_line_errors_with_no_run_folder(ray_session, tmp_path, capsys):
    (x_train, y_train), test = user_models.teacher_data()
    linear = lambda: nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))  # noqa: E731
    assert "building stage 0 failed (ValueError: no such layer)" in _bad(tmp_path, capsys, model=user_models.raising_factory)
    assert "stage 1 cannot take stage 0's output of shape (4, 16)" in _bad(
        tmp_path, capsys, model=[nn.Linear(12, 16), nn.Linear(8, 4)])
    assert "cannot be pickled" in _bad(tmp_path, capsys, model=nn.Sequential(user_models.Unpicklable(12, 16),
                                                                             nn.Linear(16, 4)))
    assert "cross-entropy takes integer class indices" in _bad(
        tmp_path, capsys, model=linear(), data=((x_train, y_train.astype(np.float32)), (test[0], test[1].astype(np.float32))))
    assert "labels of shape (4, 2) do not fit the model's output (4, 4)" in _bad(
        tmp_path, capsys, model=linear(), data=((x_train, np.stack([y_train] * 2, 1)), (test[0], np.stack([test[1]] * 2, 1))))
    assert "3 stages do not fit an nn.Sequential of 2 children" in _bad(
        tmp_path, capsys, model=nn.Sequential(nn.Linear(12, 16), nn.Linear(16, 4)), stages=3)
    assert "split [5] does not cut 3 children into 2 stages" in _bad(tmp_path, capsys, model=linear(), split=[5])
    assert "labels range over [0, 3] but the model scores 3 classes" in _bad(
        tmp_path, capsys, model=nn.Sequential(nn.Linear(12, 16), nn.Linear(16, 3)))


@pytest.mark.parametrize("flags, message", [
    (["--model", "nowhere.at_all:build", "--dataset", "synthetic"],
     "--model 'nowhere.at_all:build': cannot import nowhere.at_all"),
    (["--model", "user_models:missing", "--dataset", "synthetic"], "user_models has no attribute 'missing'"),
    (["--model", "user_models:small_mlp", "--data", "user_models:nothing"], "--data 'user_models:nothing'"),
    (["--model", "user_models:small_mlp", "--data", "user_models:teacher_data", "--stages", "7", "--cpus-per-stage", "0.5"],
     "7 stages do not fit an nn.Sequential of 6 children"),
    (["--model", "user_models:raising_model", "--data", "user_models:teacher_data"],
     "--model user_models:raising_model raised ValueError: no such layer"),
])
def test_the_command_line_refuses_bad_models_in_one_line(ray_session, tmp_path, capsys, flags, message):
    assert main(["train", *flags, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_killed_stage_of_a_users_model_is_restarted_and_the_run_equals_the_undisturbed_one(ray_session, tmp_path):
    """Recovery on the transformer: the restarted actor rebuilds its stage from the network it was given,
    reloads the checkpoint, and locked training repeats nothing and loses nothing."""
    model, data = _gpt_and_text()
    options = {"mode": "backprop", "stages": 2, "epochs": 3, "batch_size": 32, "checkpoint_every": 20, "progress": False}
    clean = dni_pipeline.train(copy.deepcopy(model), data, out=str(tmp_path / "clean"), **options)

    def kill_stage_1():
        while _manifest_step(tmp_path / "killed") < 40:
            time.sleep(0.02)
        ray_session.kill(_stage_actor(ray_session, 1), no_restart=False)

    threading.Thread(target=kill_stage_1, daemon=True).start()
    killed = dni_pipeline.train(copy.deepcopy(model), data, out=str(tmp_path / "killed"), **options)
    assert [r["stage"] for r in killed.summary["recoveries"]] == [1]
    assert killed.summary["test_loss"] == clean.summary["test_loss"]
    assert all(torch.equal(killed.state_dict()[k], v) for k, v in clean.state_dict().items())
