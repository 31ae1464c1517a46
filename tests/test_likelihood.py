"""The variational bound's terms against independent references: torch.distributions, numerical
integration, and closed forms for Gaussian data under its exact denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from oracles import GaussianOracle, seeded
from torch.distributions import Normal, kl_divergence

from diffusionkit import CosineSchedule, DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.likelihood import (
    BIN_WIDTH,
    bound_strata,
    discretized_gaussian_log_likelihood,
    fixed_log_variance,
    normal_kl,
    prior_term,
)
from diffusionkit.samplers import DDPMSampler, Variance

LOG2 = math.log(2.0)


def test_normal_kl_matches_torch_distributions() -> None:
    g = seeded(0)
    m1, m2 = (
        torch.randn(1000, generator=g, dtype=torch.float64),
        torch.randn(1000, generator=g, dtype=torch.float64),
    )
    lv1, lv2 = (
        torch.randn(1000, generator=g, dtype=torch.float64) * 3,
        torch.randn(1000, generator=g, dtype=torch.float64) * 3,
    )
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10, atol=1e-12)


def _grid() -> torch.Tensor:
    return torch.arange(256, dtype=torch.float64) * BIN_WIDTH - 1.0  # the 256 8-bit levels


@pytest.mark.parametrize(
    ("mean", "scale"), [(0.0, 0.3), (0.9, 0.01), (-0.999, 1e-3), (0.3, 1e-4), (1.2, 0.05)]
)
def test_discretized_gaussian_integrates_the_density_over_each_bin(
    mean: float, scale: float
) -> None:
    """Against numerical integration (trapezoid rule on a fine grid over each bin) of the
    normal density, with the first and last bins open to -inf and +inf."""
    x = _grid()
    log_p = discretized_gaussian_log_likelihood(
        x,
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(math.log(scale), dtype=torch.float64),
    )
    normal = Normal(
        torch.tensor(mean, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    )
    # every bin's mass from a fine trapezoid integral of the pdf (independent of any CDF)
    lo = (x - BIN_WIDTH / 2).clone()
    hi = (x + BIN_WIDTH / 2).clone()
    # the open ends, truncated 12 standard deviations out (mass beyond: < 1e-32)
    lo[0] = min(lo[0].item(), mean - 12 * scale)
    hi[-1] = max(hi[-1].item(), mean + 12 * scale)
    u = torch.linspace(0, 1, 20001, dtype=torch.float64)
    points = lo[:, None] + (hi - lo)[:, None] * u[None, :]
    mass = torch.trapezoid(normal.log_prob(points).exp(), points, dim=1)
    # bins with non-negligible mass agree to 1e-6 relative; all masses add up to 1
    big = mass > 1e-8
    torch.testing.assert_close(log_p.exp()[big], mass[big], rtol=2e-5, atol=1e-12)
    assert abs(log_p.exp().sum().item() - 1.0) < 1e-9


def test_discretized_gaussian_stays_finite_far_in_the_tails() -> None:
    """Bins up to 150 standard deviations away, where subtracting two float64 CDFs gives 0:
    the log mass is finite and equals a 50-digit mpmath evaluation of the bin's integral."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    x = _grid()
    mean, scale = -0.5, 0.01
    log_p = discretized_gaussian_log_likelihood(
        x,
        torch.tensor(mean, dtype=torch.float64),
        torch.tensor(math.log(scale), dtype=torch.float64),
    )
    assert torch.isfinite(log_p).all()
    for k in [0, 10, 40, 60, 63, 64, 65, 70, 100, 140, 200, 254]:
        centre = mpmath.mpf(k) * 2 / 255 - 1
        lo = (centre - mpmath.mpf(1) / 255 - mean) / (scale * mpmath.sqrt(2))
        hi = (centre + mpmath.mpf(1) / 255 - mean) / (scale * mpmath.sqrt(2))
        if k == 0:  # open to -inf
            mass = mpmath.erfc(-hi) / 2
        elif hi <= 0:  # below the mean: erfc of the mirror image, no cancellation
            mass = (mpmath.erfc(-hi) - mpmath.erfc(-lo)) / 2
        else:
            mass = (mpmath.erfc(lo) - mpmath.erfc(hi)) / 2
        assert log_p[k].item() == pytest.approx(float(mpmath.log(mass)), rel=1e-9), k


def test_prior_term_is_the_closed_form_kl() -> None:
    schedule = LinearSchedule(100)
    x0 = torch.rand(3, 1, 4, 4, generator=seeded(1), dtype=torch.float64) * 2 - 1
    abar = schedule.alphas_cumprod[-1].item()
    expected = 0.5 * (abar * x0.square() + (1 - abar) - 1 - math.log(1 - abar))
    torch.testing.assert_close(prior_term(x0, schedule), expected.flatten(1).mean(1) / LOG2)


def test_bound_strata_exact_and_stratified() -> None:
    exact = bound_strata(50, None)
    assert exact[:, 0].tolist() == list(range(49, -1, -1))
    assert (exact[:, 1] - exact[:, 0] == 1).all()
    assert bound_strata(50, 80).tolist() == exact.tolist()
    strata = bound_strata(50, 8)
    assert len(strata) == 8 and strata[-1].tolist() == [0, 1]
    # the KL strata tile 1 .. 49 exactly, descending
    assert strata[0, 1] == 50 and (strata[:-2, 0] == strata[1:-1, 1]).all() and strata[-2, 0] == 1
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        bound_strata(50, 1)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    "schedule", [LinearSchedule(40), CosineSchedule(40)], ids=["linear", "cosine"]
)
def test_bound_terms_of_gaussian_data_match_their_closed_form(prediction: str, schedule) -> None:
    """Data x0 ~ N(m, s²) per pixel and the exact denoiser: with the posterior variance fixed,
    E KL_t = 0.5 c0_t² Var(x0 | x_t) / beta_tilde_t per dimension, where
    Var(x0 | x_t) = s² (1 - abar_t) / (abar_t s² + 1 - abar_t); the prior term's mean is
    0.5 (abar (m² + s²) + 1 - abar - 1 - log(1 - abar)). Monte Carlo over 64 x 256 pixels."""
    mean, std = 0.1, 0.2
    model = DenoiseDiffusion(
        GaussianOracle(schedule, mean, std, prediction), schedule, prediction=prediction
    )
    x0 = mean + std * torch.randn(64, 1, 16, 16, generator=seeded(2))
    terms = model.nll_terms(x0, generator=seeded(3), progress=False)
    abar = schedule.alphas_cumprod
    var_x0 = std**2 * (1 - abar) / (abar * std**2 + 1 - abar)
    expected = (
        0.5 * schedule.posterior_mean_coef_x0.square() * var_x0 / schedule.posterior_variance / LOG2
    )
    t = terms.timesteps[0]
    assert (terms.timesteps == t).all() and (terms.weights == 1).all()
    kl = terms.terms[:, :-1].mean(0).double()
    torch.testing.assert_close(kl, expected[t[:-1]], rtol=0.06, atol=1e-4)
    a_last = abar[-1].item()
    prior = 0.5 * (a_last * (mean**2 + std**2) - math.log(1 - a_last) - a_last) / LOG2
    assert terms.prior.mean().item() == pytest.approx(prior, rel=0.05, abs=1e-5)
    assert torch.allclose(terms.total, terms.prior + terms.terms.sum(1), atol=1e-4)


def test_the_stratified_estimate_is_unbiased() -> None:
    """40 calls instead of 200: the estimate's mean over the batch matches the exact bound's,
    and both match the closed-form expectation of the KL sum."""
    schedule = LinearSchedule(200)
    model = DenoiseDiffusion(GaussianOracle(schedule, 0.0, 0.2), schedule)
    x0 = 0.2 * torch.randn(64, 1, 16, 16, generator=seeded(4))
    exact = model.nll_terms(x0, generator=seeded(5), progress=False)
    estimate = model.nll_terms(x0, steps=40, generator=seeded(6), progress=False)
    assert estimate.terms.shape == (64, 40) and estimate.weights.sum() == 200
    assert (estimate.timesteps[:, -1] == 0).all()
    assert len(estimate.timesteps[:, 0].unique()) > 1  # drawn per sample
    kl_exact = exact.terms[:, :-1].sum(1).mean().item()
    kl_estimate = (estimate.terms[:, :-1] * estimate.weights[:-1]).sum(1).mean().item()
    abar = schedule.alphas_cumprod
    var_x0 = 0.04 * (1 - abar) / (abar * 0.04 + 1 - abar)
    expected = 0.5 * schedule.posterior_mean_coef_x0.square() * var_x0 / schedule.posterior_variance
    kl_expected = expected[1:].sum().item() / LOG2
    assert kl_exact == pytest.approx(kl_expected, rel=0.02)
    assert kl_estimate == pytest.approx(kl_expected, rel=0.05)


def test_fixed_variances_at_the_decoder_use_beta_tilde_1() -> None:
    schedule = LinearSchedule(100)
    small = fixed_log_variance(Variance.POSTERIOR, schedule)
    large = fixed_log_variance(Variance.BETA, schedule)
    assert small[0] == large[0] == schedule.posterior_variance[1].log()
    torch.testing.assert_close(small[1:], schedule.posterior_variance[1:].log())
    torch.testing.assert_close(large[1:], schedule.betas[1:].log())


def test_nll_is_reproducible_per_sample_and_checks_its_input() -> None:
    torch.manual_seed(0)
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, False), groups=4)
    model = DenoiseDiffusion(net, LinearSchedule(50), sampler=DDPMSampler("beta"))
    x0 = torch.rand(3, 1, 8, 8, generator=seeded(6)) * 2 - 1
    a = model.nll(x0, generator=[seeded(i) for i in range(3)], progress=False)
    b = model.nll(x0[1:2], generator=[seeded(1)], progress=False)
    assert a.shape == (3,) and a.dtype == torch.float32
    torch.testing.assert_close(a[1:2], b)
    assert model.fixed_variance is Variance.BETA
    assert net.training  # restored
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        model.nll(x0 * 300, progress=False)
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        model.nll(x0, steps=1, progress=False)
