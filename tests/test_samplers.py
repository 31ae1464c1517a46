"""Samplers driven by the exact denoiser of Gaussian data must reproduce that data.

For data N(m, s²) the MMSE prediction is analytic (tests/oracles.py). With it, T = 1000 steps of
the reverse chain recover mean m and standard deviation s up to the chain's discretisation bias
(measured: |Δstd| <= 0.004 for both schedules, every sampler, m = 0.2, s = 0.25) plus Monte
Carlo error: N = 8,192 values give standard errors s/sqrt(N) ≈ 0.0028 for the mean and
s/sqrt(2N) ≈ 0.002 for the standard deviation; the tolerance 0.012 is the bias plus about 4
standard errors. A sampler with a wrong variance (e.g. none) misses by more than 0.1.
"""

import pytest
import torch
from oracles import GaussianOracle, seeded

from diffusionkit import (
    ClipX0,
    CosineSchedule,
    DDPMSampler,
    DenoiseDiffusion,
    LinearSchedule,
    PosteriorMeanSampler,
    Sampler,
)
from diffusionkit.samplers import SAMPLERS

MEAN, STD, TOL = 0.2, 0.25, 0.012
SHAPE = (2048, 1, 2, 2)

SAMPLER_FACTORIES = {
    "ddpm-posterior": lambda: DDPMSampler(),
    "ddpm-beta": lambda: DDPMSampler(variance="beta"),
    "ddpm-clip": lambda: DDPMSampler(clip_x0=True),
    "posterior-mean": lambda: PosteriorMeanSampler(),
    "posterior-mean-noclip": lambda: PosteriorMeanSampler(clip_x0=False),
}


def oracle_model(schedule, sampler=None, prediction="eps"):
    net = GaussianOracle(schedule, MEAN, STD, prediction)
    return DenoiseDiffusion(net, schedule, sampler, prediction)


@pytest.mark.parametrize(
    "schedule", [LinearSchedule(1000), CosineSchedule(1000)], ids=["linear", "cosine"]
)
@pytest.mark.parametrize("name", list(SAMPLER_FACTORIES))
def test_every_sampler_recovers_gaussian_data(schedule, name):
    model = oracle_model(schedule, SAMPLER_FACTORIES[name]())
    x = model.reverse_sample(SHAPE, generator=seeded(0), progress=False)
    assert abs(x.mean().item() - MEAN) < TOL
    assert abs(x.std().item() - STD) < TOL


@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_every_prediction_type_recovers_gaussian_data(prediction):
    model = oracle_model(LinearSchedule(1000), DDPMSampler(), prediction)
    x = model.reverse_sample(SHAPE, generator=seeded(0), progress=False)
    assert abs(x.mean().item() - MEAN) < TOL
    assert abs(x.std().item() - STD) < TOL
    # the same chain with the eps oracle: identical up to float error
    eps_model = oracle_model(LinearSchedule(1000), DDPMSampler(), "eps")
    y = eps_model.reverse_sample(SHAPE, generator=seeded(0), progress=False)
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_a_noiseless_sampler_would_fail_the_oracle_test():
    """Guard that the oracle test can fail: dropping the noise collapses the spread."""
    model = oracle_model(
        LinearSchedule(1000), PosteriorMeanSampler(clip_x0=False, stochastic=False)
    )
    x = model.reverse_sample(SHAPE, generator=seeded(0), progress=False)
    assert abs(x.std().item() - STD) > 0.1


def test_posterior_mean_without_clipping_equals_ddpm_posterior_variance():
    schedule = LinearSchedule(1000)
    a = oracle_model(schedule, DDPMSampler(variance="posterior"))
    b = oracle_model(schedule, PosteriorMeanSampler(clip_x0=False))
    xa = a.reverse_sample((64, 1, 4, 4), generator=seeded(3), progress=False)
    xb = b.reverse_sample((64, 1, 4, 4), generator=seeded(3), progress=False)
    torch.testing.assert_close(xa, xb, rtol=1e-4, atol=1e-5)


def test_single_steps_agree_on_random_inputs():
    schedule = CosineSchedule(100)
    gen = seeded(0)
    for i in (0, 1, 50, 99):
        coef = schedule.step_coefficients(i)
        x_t = torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64)
        eps = torch.randn(8, 3, 4, 4, generator=gen, dtype=torch.float64)
        a, b = coef.alpha_cumprod**0.5, (1 - coef.alpha_cumprod) ** 0.5
        x0 = (x_t - b * eps) / a
        ddpm = DDPMSampler().step(x_t, eps, x0, coef, seeded(1))
        post = PosteriorMeanSampler(clip_x0=False).step(x_t, eps, x0, coef, seeded(1))
        torch.testing.assert_close(ddpm, post, rtol=1e-9, atol=1e-9)
        mean = PosteriorMeanSampler(clip_x0=False, stochastic=False).step(x_t, eps, x0, coef)
        expected = (x_t - coef.beta / b * eps) / coef.alpha**0.5  # Algorithm 2 without noise
        torch.testing.assert_close(mean, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", [*sorted(SAMPLER_FACTORIES), "ddim", "ddim-eta1"])
def test_steps_leave_their_inputs_alone_and_differentiate(name):
    # the steps accumulate into fresh tensors in place: x_t, eps and x0 must not change, and
    # gradients must flow (guidance research differentiates through a step)
    from diffusionkit import DDIMSampler

    factories = {**SAMPLER_FACTORIES, "ddim": DDIMSampler, "ddim-eta1": lambda: DDIMSampler(1.0)}
    coef = CosineSchedule(100).step_coefficients(40)
    x_t = torch.randn(2, 1, 3, 3, generator=seeded(0), requires_grad=True)
    eps = torch.randn(2, 1, 3, 3, generator=seeded(1), requires_grad=True)
    a, b = coef.alpha_cumprod**0.5, (1 - coef.alpha_cumprod) ** 0.5
    x0 = (x_t - b * eps) / a
    before = [v.detach().clone() for v in (x_t, eps, x0)]
    out = factories[name]().step(x_t, eps, x0, coef, seeded(2))
    for value, old in zip((x_t, eps, x0), before, strict=True):
        assert torch.equal(value.detach(), old)
    out.sum().backward()
    assert x_t.grad is not None and torch.isfinite(x_t.grad).all()
    assert eps.grad is not None and eps.grad.abs().sum() > 0


def test_last_step_adds_no_noise():
    coef = LinearSchedule(50).step_coefficients(0)
    x_t = torch.randn(4, 1, 2, 2)
    eps = torch.randn(4, 1, 2, 2)
    x0 = (x_t - (1 - coef.alpha_cumprod) ** 0.5 * eps) / coef.alpha_cumprod**0.5
    for sampler in (
        DDPMSampler(),
        DDPMSampler(variance="beta"),
        PosteriorMeanSampler(clip_x0=False),
    ):
        assert torch.equal(
            sampler.step(x_t, eps, x0, coef, seeded(0)), sampler.step(x_t, eps, x0, coef, seeded(1))
        )


def test_sampler_arguments_are_exposed_and_validated():
    s = DDPMSampler(variance="beta", clip_x0=True)
    assert s.variance == "beta" and s.clip_x0 is True
    p = PosteriorMeanSampler(clip_x0=False, stochastic=False)
    assert p.clip_x0 is False and p.stochastic is False
    with pytest.raises(ValueError, match="variance must be one of"):
        DDPMSampler(variance="large")
    for sampler in (s, p):
        assert SAMPLERS.build(type(sampler).__name__, sampler.config()) == sampler
    assert SAMPLERS.get("ddpm") is DDPMSampler
    assert SAMPLERS.get("posterior-mean") is PosteriorMeanSampler
    with pytest.raises(TypeError):
        Sampler()  # abstract


class _Recording(DDPMSampler):
    """A DDPM sampler that records, per step, whether the loop computed x0_hat for it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.got_x0: list[bool] = []

    def step(self, x_t, eps, x0, coef, generator=None):
        self.got_x0.append(x0 is not None)
        return super().step(x_t, eps, x0, coef, generator)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loop_passes_x0_only_where_the_step_reads_it(prediction):
    schedule = LinearSchedule(25)
    shape = (4, 1, 2, 2)
    plain = _Recording()
    x = oracle_model(schedule, plain, prediction).reverse_sample(
        shape, generator=seeded(0), progress=False
    )
    assert plain.got_x0 == [False] * 25  # eq. 11 reads eps_hat alone
    clipped = _Recording(clip_x0=True)
    oracle_model(schedule, clipped, prediction).reverse_sample(
        shape, generator=seeded(0), progress=False
    )
    assert clipped.got_x0 == [True] * 25
    seen = []
    watched = _Recording()
    y = oracle_model(schedule, watched, prediction).reverse_sample(
        shape, generator=seeded(0), progress=False, callback=lambda *a: seen.append(a[3])
    )
    # the callback reads x0_hat, but the step is not handed it: the same arithmetic either way
    assert watched.got_x0 == [False] * 25 and all(isinstance(v, torch.Tensor) for v in seen)
    torch.testing.assert_close(x, y, rtol=0, atol=0)
    # a model that processes x0_hat hands it to every step (eq. 7's form from the clipped x0)
    processed = _Recording()
    model = oracle_model(schedule, processed, prediction)
    model.x0_processing = ClipX0()
    model.reverse_sample(shape, generator=seeded(0), progress=False)
    assert processed.got_x0 == [True] * 25
    # the default for any other sampler: always given x0
    assert Sampler.uses_x0(PosteriorMeanSampler(), schedule.step_coefficients(3))


def test_ddpm_reads_x0_where_alpha_is_zero():
    from diffusionkit.schedules import ZeroTerminalSNRSchedule

    schedule = ZeroTerminalSNRSchedule(LinearSchedule(25))
    assert schedule.step_coefficients(24).alpha == 0.0
    sampler = _Recording()
    x = oracle_model(schedule, sampler, "v").reverse_sample(
        (4, 1, 2, 2), generator=seeded(0), progress=False
    )
    assert sampler.got_x0 == [True] + [False] * 24  # eq. 7's form only at the first step
    assert torch.isfinite(x).all()


def test_samplers_that_read_x0_reject_none_clearly():
    coef = CosineSchedule(10).step_coefficients(5)
    x = torch.zeros(1, 1, 2, 2)
    for sampler in (PosteriorMeanSampler(), DDPMSampler(clip_x0=True)):
        assert sampler.uses_x0(coef)
        with pytest.raises(TypeError, match="x0_hat"):
            sampler.step(x, x, None, coef)


def test_fused_v_split_equals_the_textbook_form():
    from diffusionkit.prediction import Prediction, predicted_eps, split_prediction

    g = seeded(0)
    x_t, out = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    a, b = 0.6, 0.8
    eps, x0 = split_prediction(out, x_t, a, b, Prediction.V)
    torch.testing.assert_close(eps, b * x_t + a * out)  # Salimans & Ho 2022, App. D
    torch.testing.assert_close(x0, a * x_t - b * out)
    for kind in Prediction:
        torch.testing.assert_close(
            predicted_eps(out, x_t, a, b, kind), split_prediction(out, x_t, a, b, kind)[0]
        )
