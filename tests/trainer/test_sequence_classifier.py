"""A sequence classifier of stock layers, as a new user writes one: (B, T, D) activations between stages and one
label per sequence, cut by `split`, trained by every mode on real actors."""

import copy

import pytest
import user_models
from torch import nn

import dni_pipeline

MODES = ("backprop", "gpipe", "1f1b", "dni", "cdni", "dgl", "delayed")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains_a_sequence_classifier_and_its_state_dict_gives_the_reported_accuracy(ray_session, mode):
    model, data = user_models.sequence_classifier(), user_models.majority_token_data()
    before = user_models.evaluate(copy.deepcopy(model), data["x_test"], data["y_test"])
    result = dni_pipeline.train(model, data, mode=mode, stages=2, split=[2], epochs=3, batch_size=64, lr=3e-3,
                                progress=False)
    summary = result.summary
    assert summary["test_accuracy"] > max(0.7, before["accuracy"] + 0.1), summary["test_accuracy"]
    trained = copy.deepcopy(model)
    trained.load_state_dict(result.state_dict())
    after = user_models.evaluate(trained, data["x_test"], data["y_test"])
    assert after["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    assert after["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)


def test_too_many_stages_name_the_models_cut_points_not_an_arch(ray_session):
    model = user_models.sequence_classifier(layers=4)  # 7 children
    with pytest.raises(dni_pipeline.UserError) as error:
        dni_pipeline.train(model, user_models.majority_token_data(), mode="dni", stages=9, progress=False)
    assert "9 stages do not fit an nn.Sequential of 7 children" in str(error.value) and "arch" not in str(error.value)


@pytest.mark.parametrize("mode, factory", [("cdni", "synthetic_gradient"), ("dgl", "aux_head")])
def test_labels_a_stage_output_cannot_take_are_refused_before_any_actor(ray_session, mode, factory):
    """Per-position labels, and a stage boundary that is flat: neither a label per sample nor one per position."""
    data = user_models.markov_text_data(windows=120)
    model = nn.Sequential(nn.Embedding(12, 8), nn.Flatten(), nn.Linear(16 * 8, 16 * 8), nn.Unflatten(1, (16, 8)),
                          nn.Linear(8, 12))
    with pytest.raises(dni_pipeline.UserError, match=rf"{mode}: stage 0's output of per-sample shape \(128,\) cannot take "
                                                     rf"labels of per-sample shape \(16,\).*own {factory}"):
        dni_pipeline.train(model, data, mode=mode, stages=2, split=[2], progress=False)
