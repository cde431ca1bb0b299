"""Noise schedules and samplers against closed forms (Ho et al. 2020; Nichol and Dhariwal 2021; Song et al. 2020)."""

import math

import numpy as np
import pytest
import torch

from diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from diffusion.schedule import OBJECTIVES, NoiseSchedule


def test_linear_schedule_closed_forms():
    s = NoiseSchedule("linear", 1000)
    assert s.betas.dtype == np.float64 and s.betas[0] == 1e-4 and s.betas[-1] == pytest.approx(0.02)
    assert s.alphas_cumprod[499] == pytest.approx(np.prod(1 - s.betas[:500]), rel=1e-12)
    t = 300
    expected_var = s.betas[t] * (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t])
    assert s.posterior_variance[t] == pytest.approx(expected_var, rel=1e-12)
    assert s.posterior_variance[0] == 0.0 and np.isfinite(s.posterior_log_variance_clipped).all()
    assert s.posterior_log_variance_clipped[0] == pytest.approx(math.log(s.posterior_variance[1]))
    assert s.alphas_cumprod[-1] < 5e-5  # x_T is practically pure noise


def test_cosine_schedule_follows_its_formula():
    s = NoiseSchedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert s.alphas_cumprod[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max() <= 0.999


def test_q_sample_moments_match_the_closed_form():
    s = NoiseSchedule("linear", 1000)
    x0 = torch.tensor([0.7, -0.3], dtype=torch.float64).repeat(200_000, 1)
    t = torch.full((len(x0),), 250)
    xt = s.q_sample(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a = s.alphas_cumprod[250]
    np.testing.assert_allclose(xt.mean(0).numpy(), math.sqrt(a) * np.array([0.7, -0.3]), atol=0.006)
    np.testing.assert_allclose(xt.var(0).numpy(), [1 - a, 1 - a], rtol=0.01)


def test_posterior_equals_the_direct_gaussian_product():
    """q(x_{t-1} | x_t, x_0) from Bayes:
    N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1 - abar_{t-1})."""
    s = NoiseSchedule("cosine", 200)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    xt = torch.randn(5, 3, dtype=torch.float64)
    for step in (1, 37, 199):
        t = torch.full((5,), step)
        mean, var, _ = s.q_posterior(x0, xt, t)
        a, b, abar_prev = s.alphas[step], s.betas[step], s.alphas_cumprod[step - 1]
        precision = a / b + 1 / (1 - abar_prev)
        direct_mean = (math.sqrt(a) / b * xt + math.sqrt(abar_prev) / (1 - abar_prev) * x0) / precision
        torch.testing.assert_close(mean, direct_mean, rtol=1e-10, atol=1e-12)
        assert var[0, 0].item() == pytest.approx(1 / precision, rel=1e-10)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_predict_x0_inverts_every_objective(objective):
    s = NoiseSchedule("linear", 1000)
    x0, noise = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    xt = s.q_sample(x0, t, noise)
    torch.testing.assert_close(s.predict_x0(objective, xt, t, s.target(objective, x0, noise, t)), x0)
    torch.testing.assert_close(s.eps_from_x0(xt, t, x0), noise)


def _oracle(s: NoiseSchedule, point: torch.Tensor):
    """The exact eps-denoiser of a distribution that is a single point."""
    return lambda x, t: s.eps_from_x0(x, t, point.expand_as(x))


def test_ddim_eta0_is_deterministic_and_exact_for_an_oracle():
    s = NoiseSchedule("linear", 1000)
    point = torch.tensor([0.25, -0.5])
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(3))
    a = ddim_sample(_oracle(s, point), s, (16, 2), steps=20, eta=0.0, noise=noise)
    b = ddim_sample(_oracle(s, point), s, (16, 2), steps=20, eta=0.0, noise=noise)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, point.expand(16, 2), atol=1e-5, rtol=0)
    c = ddim_sample(_oracle(s, point), s, (16, 2), steps=20, eta=1.0, noise=noise,
                    generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(c, point.expand(16, 2), atol=1e-4, rtol=0)  # stochastic path, same end
    assert ddim_timesteps(1000, 20)[-1] == 999 and len(ddim_timesteps(1000, 20)) == 20


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_ddpm_with_an_oracle_lands_on_the_point(variance):
    s = NoiseSchedule("linear", 100, beta_end=0.2)
    point = torch.tensor([0.5, 0.1])
    out = ddpm_sample(_oracle(s, point), s, (8, 2), variance=variance, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, point.expand(8, 2), atol=1e-5, rtol=0)


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule("quadratic")
    with pytest.raises(ValueError, match="unknown objective"):
        NoiseSchedule().target("score", torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))


def test_bits_per_dim_of_an_oracle_is_the_prior_plus_the_decoder_term():
    """With the exact x_0 every KL term of the bound is 0, so what is left is the prior KL and the
    decoder's -log P(bin), both in closed form here."""
    from diffusion.likelihood import bits_per_dim

    s = NoiseSchedule("linear", 50, beta_start=1e-5, beta_end=0.3)
    x0 = (torch.randint(0, 256, (3, 1, 4, 4)).double() / 255.0) * 2 - 1
    oracle = lambda x, t: s.eps_from_x0(x, t, x0)  # noqa: E731
    abar = s.alphas_cumprod[-1]
    prior = 0.5 * (-1 - math.log(1 - abar) + (1 - abar) + abar * x0**2)  # KL(N(sqrt(abar) x0, 1-abar) || N(0, 1))
    sigma = math.sqrt(s.posterior_variance[1])  # the clipped decoder variance at t = 0
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    inside, edge = phi(1 / 255 / sigma) - phi(-1 / 255 / sigma), phi(1 / 255 / sigma)
    decoder = torch.where(x0.abs() > 0.999, -math.log(edge), -math.log(inside))
    expected = ((prior + decoder).flatten(1).sum(1) / (16 * math.log(2))).mean().item()
    got = bits_per_dim(oracle, s, x0, generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(expected, rel=1e-6)
    assert got < bits_per_dim(lambda x, t: torch.zeros_like(x), s, x0, generator=torch.Generator().manual_seed(0))
