"""Synthetic-gradient updates that help: the calibration's arithmetic, and SG-driven training on real
MNIST doing no worse than the same run with its synthetic gradients switched off."""

import dataclasses
import math

import pytest
import torch

from dni_pipeline.core.datasets import load_dataset
from dni_pipeline.trainer.config import TrainConfig
from dni_pipeline.trainer.synthetic_gradients import Calibration, StepTrust
from dni_pipeline.trainer.training import train_pipeline


def _calibrated(pairs) -> Calibration:
    calibration = Calibration()
    for predicted, target in pairs:
        calibration.update(predicted, target)
    return calibration


def test_calibration_starts_closed_and_stays_closed_for_useless_predictions():
    torch.manual_seed(0)
    g = torch.randn(32, 16)
    orthogonal = torch.linalg.qr(torch.randn(16, 16)).Q
    useless = g @ orthogonal[:, :1] @ orthogonal[:, 1:2].T  # a direction with no overlap on average
    assert Calibration().scale == 0.0
    assert _calibrated([(-g, g)]).scale == 0.0  # anti-aligned: no step at all
    assert _calibrated([(torch.zeros_like(g), g)]).scale == 0.0  # the zero-initialised model
    assert abs(_calibrated([(useless, g)]).scale) < 0.05


@pytest.mark.parametrize("factor, scale", [(2.0, 0.5), (0.5, 1.0), (1.0, 1.0)])
def test_calibration_of_an_exact_direction_is_the_least_squares_scale(factor, scale):
    """A prediction along the target (cosine 1): alpha = 1 / factor, capped at 1."""
    g = torch.randn(8, 4)
    assert _calibrated([(factor * g, g)] * 3).scale == pytest.approx(scale)


def test_calibration_is_alpha_times_the_cosine_of_the_running_sums():
    torch.manual_seed(0)
    pairs = [(torch.randn(8, 4), torch.randn(8, 4)) for _ in range(5)]
    pairs = [(p + t, t) for p, t in pairs]  # positively correlated
    cross = energy = target = 0.0
    for p, t in pairs:
        cross = 0.9 * cross + 0.1 * float((p * t).sum())
        energy = 0.9 * energy + 0.1 * float((p * p).sum())
        target = 0.9 * target + 0.1 * float((t * t).sum())
    expected = min(1.0, cross / energy) * cross / (energy * target) ** 0.5
    calibration = _calibrated(pairs)
    assert calibration.scale == pytest.approx(expected, rel=1e-9)
    restored = Calibration()
    restored.load_state_dict(calibration.state_dict())
    assert restored.scale == calibration.scale


def _trusted(cosines, true=None) -> StepTrust:
    """A trust fed steps at the given cosines to their true gradients (all along (1, 0) unless `true` gives them)."""
    trust = StepTrust()
    for k, cosine in enumerate(cosines):
        gradient = torch.tensor([1.0, 0.0], dtype=torch.float64) if true is None else true[k]
        angle = math.atan2(float(gradient[1]), float(gradient[0])) + math.acos(cosine)
        step = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        trust.update([step], [gradient])
    return trust


def test_step_trust_is_a_lower_bound_on_the_recent_cosines():
    assert _trusted([]).scale == 0.0 and _trusted([0.9]).scale == 0.0  # two measurements at least
    assert _trusted([0.4] * 30).scale == pytest.approx(0.4)  # no spread: the mean itself
    assert _trusted([0.3, -0.3] * 15).scale == 0.0  # a mean near 0: shut
    assert _trusted([-0.5] * 10).scale == 0.0
    # Three measurements, by hand: weights 0.3 x (0.49, 0.7, 1) from oldest to newest, bias-corrected.
    cosines = [0.2, 0.6, 0.4]
    weights = [0.3 * 0.7**2, 0.3 * 0.7, 0.3]
    total = sum(weights)
    mean = sum(w * c for w, c in zip(weights, cosines)) / total
    variance = sum(w * c * c for w, c in zip(weights, cosines)) / total - mean**2
    effective = total**2 / sum(w * w for w in weights)
    trust = _trusted(cosines)
    assert trust.scale == pytest.approx(mean - 2 * (variance / effective) ** 0.5, rel=1e-9)
    restored = StepTrust()
    restored.load_state_dict(trust.state_dict())
    assert restored.scale == trust.scale


def test_step_trust_reads_the_bound_against_the_true_gradients_own_step():
    """The reference is the cosine to each true gradient of Adam's step on the measured true gradients alone (betas
    over the four steps between measurements, bias-corrected): along one direction it is 1, so the trust is the bound itself; for
    gradients that alternate between two directions at 60 degrees it is below 1 and the trust is the bound over it."""
    assert _trusted([0.4] * 30).scale == pytest.approx(0.4)
    alternating = [torch.tensor([math.cos(a), math.sin(a)], dtype=torch.float64) for a in [0.0, math.pi / 3] * 15]
    trust = _trusted([0.3] * 30, alternating)
    (beta1, beta2), first, second, reference = (0.9**4, 0.999**4), torch.zeros(2, dtype=torch.float64), \
        torch.zeros(2, dtype=torch.float64), 0.0
    for n, g in enumerate(alternating, 1):
        first, second = beta1 * first + (1 - beta1) * g, beta2 * second + (1 - beta2) * g**2
        step = first / (1 - beta1**n) / ((second / (1 - beta2**n)).sqrt() + 1e-8)
        reference = 0.7 * reference + 0.3 * float(step @ g / step.norm())
    reference /= 1 - 0.7**30
    assert 0.5 < reference < 0.99
    assert trust.scale == pytest.approx(min(1.0, 0.3 / reference), rel=1e-7)
    assert _trusted([0.3, -0.3] * 15, alternating).scale == 0.0  # the bound still shuts a useless SG
    restored = StepTrust()
    restored.load_state_dict(trust.state_dict())
    assert restored.scale == trust.scale > 0


@pytest.mark.slow
def test_sg_driven_training_is_no_worse_than_the_sg_off_ablation(ray_session, mnist_dir):
    """cDNI on the bench's kind of block (1024 wide, three layers per stage), 40 steps of 256 real MNIST
    digits. The paper's rule (raw SG into Adam) loses to leaving stage 0 untrained here; the corrected rule
    (the default), the gated one and the calibrated one must not."""
    full = load_dataset("mnist", str(mnist_dir.parent))
    data = dataclasses.replace(full, x_train=full.x_train[:10240], y_train=full.y_train[:10240])
    base = TrainConfig(mode="cdni", dataset="mnist", arch="fc1024*6", stages=2, batch_size=256, sg_hidden=[],
                       max_steps=40, eval_every=40, sg_probe_every=0).validate()
    accuracy, results = {}, {}
    for name, changes in [("ablation", {"sg_off": True}), ("corrected", {}), ("gated", {"sg_update": "gated"}),
                          ("calibrated", {"sg_update": "calibrated"}), ("paper", {"sg_update": "paper"})]:
        results[name] = train_pipeline(dataclasses.replace(base, **changes), data, progress=False)
        accuracy[name] = results[name].summary["test_accuracy"]
    assert accuracy["paper"] < accuracy["ablation"] - 0.01, accuracy  # the setting tells the two rules apart
    assert accuracy["calibrated"] >= accuracy["ablation"] - 0.002, accuracy
    assert accuracy["gated"] >= accuracy["ablation"] - 0.002, accuracy
    assert accuracy["corrected"] >= accuracy["ablation"] - 0.002, accuracy
    assert results["corrected"].summary["config"]["sg_update"] == "corrected"
    # The gated stage measured every 4th batch on the real actors, and stepped at the trust it had then.
    measured = [r["step"] for r in results["gated"].steps if r.get("sg_step_cosine", [None])[0] is not None]
    assert measured == list(range(0, 40, 4))
    assert results["gated"].steps[0]["sg_scale"] == [0.0]
