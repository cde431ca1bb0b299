"""DDPM training on 2-D data: it learns, its checkpoints resume bit-for-bit, its metrics have floors."""

import pytest
import torch

from diffusion.denoisers import MLPDenoiser
from diffusion.metrics import energy_distance, mmd_rbf, with_floor_and_ceiling
from diffusion.samplers import ddim_sample
from diffusion.toys import TOYS, sample_toy
from diffusion.trainer import DiffusionTrainConfig, Trainer


def _trainer(steps: int, seed: int = 0, ema_decay: float = 0.999) -> Trainer:
    torch.manual_seed(seed)
    cfg = DiffusionTrainConfig(steps=steps, batch_size=128, lr=2e-3, warmup=20, ema_decay=ema_decay, seed=seed)
    return Trainer(cfg, MLPDenoiser(dim=2, width=128, depth=3), sample_toy("moons", 4000, seed=1))


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    straight = _trainer(30)
    for _ in range(30):
        straight.train_step()
    first = _trainer(30)
    for _ in range(12):
        first.train_step()
    first.save(tmp_path / "ckpt.pt")
    resumed = _trainer(30, seed=0)
    resumed.load(tmp_path / "ckpt.pt")
    while resumed.step < 30:
        resumed.train_step()
    for a, b in zip(straight.state_dict()["model"].values(), resumed.state_dict()["model"].values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    trainer = _trainer(10)
    trainer.save(tmp_path / "ckpt.pt")
    other = Trainer(DiffusionTrainConfig(steps=10, batch_size=128, lr=1e-4, warmup=20), MLPDenoiser(dim=2, width=128, depth=3),
                    torch.zeros(4, 2))
    with pytest.raises(ValueError, match="another configuration"):
        other.load(tmp_path / "ckpt.pt")


def test_metrics_floor_below_ceiling():
    reference, held_out = sample_toy("8gaussians", 1500, seed=1), sample_toy("8gaussians", 1500, seed=2)
    for metric in (energy_distance, mmd_rbf):
        result = with_floor_and_ceiling(metric, held_out, reference, sample_toy("8gaussians", 1500, seed=3),
                                        generator=torch.Generator().manual_seed(0))
        assert abs(result["floor"]) < 0.05 * result["ceiling"] and abs(result["value"]) < 0.05 * result["ceiling"]
    assert {tuple(sample_toy(name, 10, 0).shape) for name in TOYS} == {(10, 2)}


@pytest.mark.slow
def test_short_moons_training_lands_far_below_the_noise_ceiling():
    torch.set_num_threads(2)
    trainer = _trainer(1500, ema_decay=0.99)
    for _ in range(trainer.cfg.steps):
        trainer.train_step()
    samples = ddim_sample(trainer.ema, trainer.schedule, (1500, 2), steps=50, clip=None,
                          generator=torch.Generator().manual_seed(0))
    result = with_floor_and_ceiling(energy_distance, samples, sample_toy("moons", 1500, seed=7),
                                    sample_toy("moons", 1500, seed=8), generator=torch.Generator().manual_seed(0))
    assert result["value"] < 0.1 * result["ceiling"], result


def test_frechet_distance_closed_form():
    from diffusion.features import frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(20000, 3, generator=g, dtype=torch.float64) * 2 + 1
    # N(0, I) vs N(1, 4I) in 3 dims: |mu|^2 = 3, Tr(I + 4I - 2 * 2I) = 3
    assert frechet_distance(a, b) == pytest.approx(6.0, abs=0.1)
    assert abs(frechet_distance(a, a)) < 1e-9


def test_learned_variance_interpolates_between_the_two_fixed_variances():
    from diffusion.schedule import NoiseSchedule

    s = NoiseSchedule("linear", 100)
    t = torch.tensor([1, 50, 99])
    low = s.learned_log_variance(-torch.ones(3, 2), t)
    high = s.learned_log_variance(torch.ones(3, 2), t)
    torch.testing.assert_close(low[:, 0], torch.tensor(s.posterior_log_variance_clipped[[1, 50, 99]], dtype=torch.float32))
    torch.testing.assert_close(high[:, 0], torch.log(torch.tensor(s.betas[[1, 50, 99]], dtype=torch.float32)))


def test_hybrid_loss_trains_the_variance_and_leaves_the_mean_to_l_simple():
    """The VLB term's gradient reaches the variance outputs but not the prediction outputs."""
    grads = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        cfg = DiffusionTrainConfig(batch_size=64, learn_variance=True, vlb_weight=weight, seed=0)
        trainer = Trainer(cfg, MLPDenoiser(dim=2, width=32, depth=1, out_dim=4), sample_toy("moons", 256, seed=1))
        t, noise = torch.randint(0, 1000, (64,)), torch.randn(64, 2)
        trainer.loss(trainer.data[:64], t, noise, scale=1 / 64).backward()
        grads[weight] = trainer.model.out[1].weight.grad.clone()  # rows 0-1: prediction, rows 2-3: variance
    torch.testing.assert_close(grads[0.0][:2], grads[1.0][:2])
    assert not torch.allclose(grads[0.0][2:], grads[1.0][2:])
    assert torch.count_nonzero(grads[0.0][2:]) == 0  # without the VLB nothing trains the variance


def test_ddpm_sampling_uses_the_learned_variance():
    """A model whose variance output v is -1 samples exactly as fixed_small, +1 exactly as fixed_large, and
    v = 0 (halfway between, in log space) as neither: the sampler follows what the model learned."""
    from diffusion.samplers import ddpm_sample
    from diffusion.schedule import NoiseSchedule

    s = NoiseSchedule("linear", 20)

    def eps(x, t):
        return 0.1 * x

    def draw(model, **kw):
        return ddpm_sample(model, s, (10, 2), clip=None, generator=torch.Generator().manual_seed(0), **kw)

    learned = {v: draw(lambda x, t, v=v: torch.cat([eps(x, t), torch.full_like(x, v)], dim=1), learned_variance=True)
               for v in (-1.0, 0.0, 1.0)}
    small, large = draw(eps, variance="fixed_small"), draw(eps, variance="fixed_large")
    torch.testing.assert_close(learned[-1.0], small)
    torch.testing.assert_close(learned[1.0], large)
    assert not torch.allclose(learned[0.0], small) and not torch.allclose(learned[0.0], large)
