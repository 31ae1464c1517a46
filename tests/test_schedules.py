"""Noise schedules against diffusers' DDPMScheduler and independent float64 formulas."""

import math

import numpy as np
import pytest
import torch

from diffusionkit import CosineSchedule, LinearSchedule, RespacedSchedule, Spacing
from diffusionkit.sampling_plan import plan_sampling
from diffusionkit.schedules import SCHEDULES

diffusers = pytest.importorskip("diffusers")


def diffusers_alphas_cumprod(timesteps, **kwargs):
    sched = diffusers.DDPMScheduler(num_train_timesteps=timesteps, **kwargs)
    return sched.betas.double(), sched.alphas_cumprod.double()


@pytest.mark.parametrize("timesteps", [1000, 100])
def test_linear_matches_diffusers_with_scaled_ends(timesteps):
    scale = 1000 / timesteps
    sched = LinearSchedule(timesteps)
    betas, abar = diffusers_alphas_cumprod(
        timesteps, beta_start=1e-4 * scale, beta_end=0.02 * scale, beta_schedule="linear"
    )
    # diffusers builds its betas in float32: agreement to float32 precision
    torch.testing.assert_close(sched.betas, betas, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(sched.alphas_cumprod, abar, atol=1e-6, rtol=1e-5)


def test_linear_is_the_ddpm_paper_schedule_at_1000_steps():
    sched = LinearSchedule(1000)
    assert sched.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert sched.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    # improved-diffusion's get_named_beta_schedule("linear", T), written out in numpy
    for timesteps in (1000, 100, 50):
        scale = 1000 / timesteps
        expected = np.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=np.float64)
        np.testing.assert_allclose(LinearSchedule(timesteps).betas.numpy(), expected, rtol=1e-12)


def test_unscaled_linear_is_the_diffusers_convention():
    sched = LinearSchedule(100, scale_with_timesteps=False)
    _, abar = diffusers_alphas_cumprod(100, beta_schedule="linear")
    torch.testing.assert_close(sched.alphas_cumprod, abar, atol=1e-6, rtol=1e-5)
    # the last step of the unscaled 100-step schedule is far from pure noise (FIELD-NOTES)
    assert sched.alphas_cumprod[-1].item() == pytest.approx(0.364, abs=1e-3)
    assert LinearSchedule(100).alphas_cumprod[-1].item() < 1e-4


@pytest.mark.parametrize("timesteps", [1000, 100])
def test_cosine_matches_diffusers_squaredcos_cap_v2(timesteps):
    sched = CosineSchedule(timesteps)
    betas, abar = diffusers_alphas_cumprod(timesteps, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(sched.betas, betas, atol=1e-6, rtol=0)
    torch.testing.assert_close(sched.alphas_cumprod, abar, atol=1e-6, rtol=0)


def test_cosine_follows_its_closed_form():
    sched = CosineSchedule(50, s=0.008)

    def f(t):
        return math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 30):  # unclipped region
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert sched.betas.max().item() <= 0.999


@pytest.mark.parametrize(
    "sched", [LinearSchedule(1000), LinearSchedule(50), CosineSchedule(1000), CosineSchedule(7)]
)
def test_schedule_invariants(sched):
    assert sched.betas.dtype == torch.float64
    assert sched.betas.shape == (sched.timesteps,)
    assert ((sched.betas > 0) & (sched.betas < 1)).all()
    assert (sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all()
    assert (sched.snr[1:] < sched.snr[:-1]).all()
    assert sched.alphas_cumprod_prev[0] == 1.0
    assert sched.posterior_variance[0] == 0.0
    assert len(sched) == sched.timesteps


def test_posterior_coefficients_against_independent_formulas():
    sched = LinearSchedule(1000)
    b = sched.betas.numpy()
    abar = np.cumprod(1 - b)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    np.testing.assert_allclose(sched.posterior_variance, b * (1 - abar_prev) / (1 - abar))
    np.testing.assert_allclose(sched.posterior_mean_coef_x0, b * np.sqrt(abar_prev) / (1 - abar))
    np.testing.assert_allclose(
        sched.posterior_mean_coef_xt, (1 - abar_prev) * np.sqrt(1 - b) / (1 - abar)
    )


def test_step_coefficients_are_python_floats_of_the_tables():
    sched = CosineSchedule(20)
    c = sched.step_coefficients(7)
    assert c.index == 7 and isinstance(c.beta, float)
    assert c.alpha_cumprod == sched.alphas_cumprod[7].item()
    assert c.alpha_cumprod_prev == sched.alphas_cumprod[6].item()
    with pytest.raises(IndexError):
        sched.step_coefficients(20)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: LinearSchedule(0), "positive int"),
        (lambda: LinearSchedule(1.5), "positive int"),
        (lambda: LinearSchedule(beta_start=0.1, beta_end=0.01), "beta_start"),
        (lambda: LinearSchedule(10, beta_end=0.02), "beta_end"),
        (lambda: CosineSchedule(s=-1), "s must"),
        (lambda: CosineSchedule(max_beta=1.5), "max_beta"),
    ],
)
def test_invalid_schedule_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_config_round_trip_and_registry():
    for sched in (LinearSchedule(100, 2e-4, 0.03, False), CosineSchedule(30, s=0.01)):
        rebuilt = SCHEDULES.build(type(sched).__name__, sched.config())
        assert rebuilt == sched
        torch.testing.assert_close(rebuilt.betas, sched.betas, rtol=0, atol=0)
    assert SCHEDULES.get("cosine") is CosineSchedule
    with pytest.raises(KeyError, match="valid names"):
        SCHEDULES.get("quadratic")


def test_respaced_schedule_keeps_the_marginals():
    base = LinearSchedule(1000)
    full = RespacedSchedule(base, range(1000))
    torch.testing.assert_close(full.betas, base.betas, rtol=1e-12, atol=1e-15)
    kept = Spacing.TRAILING.timesteps(1000, 50)
    sub = RespacedSchedule(base, kept)
    torch.testing.assert_close(sub.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="strictly increasing"):
        RespacedSchedule(base, [5, 3])
    with pytest.raises(ValueError, match="lie in"):
        RespacedSchedule(base, [0, 1000])


@pytest.mark.parametrize("spacing", [s for s in Spacing if not s.needs_schedule])
@pytest.mark.parametrize("steps", [1, 7, 50, 999, 1000])
def test_spacing_matches_diffusers(spacing, steps):
    ours = spacing.timesteps(1000, steps)
    assert ours.shape == (steps,)
    if spacing is Spacing.LINSPACE:  # diffusers' DDIM "linspace" is the same rule
        expected = np.round(np.linspace(0, 999, steps)).astype(np.int64)
    else:
        sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing.value)
        sched.set_timesteps(steps)
        expected = np.sort(sched.timesteps.numpy())
    np.testing.assert_array_equal(ours.numpy(), expected)
    if spacing is Spacing.TRAILING:
        assert ours[-1] == 999
    if steps == 1000:
        np.testing.assert_array_equal(ours.numpy(), np.arange(1000))


def test_spacing_rejects_bad_step_counts():
    for steps in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="steps must be"):
            Spacing.TRAILING.timesteps(1000, steps)


@pytest.mark.parametrize("steps", [2, 10, 25])
def test_noise_level_spacings_match_diffusers(steps):
    """Karras sigmas (diffusers' use_karras_sigmas, fractional timesteps there) and uniform
    log-SNR steps (use_lu_lambdas), rounded to diffusionkit's integer timesteps. (At 60 steps
    diffusers' log-SNR timesteps repeat near t = 0, [..., 2, 1, 1, 0, 0]; diffusionkit's stay
    distinct, moving the crowded ones up: see the next test.)"""
    abar = LinearSchedule(1000, scale_with_timesteps=False).alphas_cumprod
    euler = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, use_karras_sigmas=True)
    euler.set_timesteps(steps)
    karras = Spacing.KARRAS.timesteps(1000, steps, abar).flip(0).numpy()
    np.testing.assert_allclose(karras, euler.timesteps.numpy(), atol=0.5 + 1e-9)
    dpm = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, use_lu_lambdas=True)
    dpm.set_timesteps(steps)
    lu = Spacing.LOG_SNR.timesteps(1000, steps, abar).flip(0).numpy()
    np.testing.assert_allclose(lu, dpm.timesteps.numpy(), atol=1)


@pytest.mark.parametrize("spacing", [Spacing.KARRAS, Spacing.LOG_SNR])
@pytest.mark.parametrize("steps", [1, 2, 40, 199, 200])
def test_noise_level_spacings_keep_the_ends_and_stay_strictly_increasing(spacing, steps):
    abar = CosineSchedule(200).alphas_cumprod  # its last sigma is huge: steps bunch up there
    kept = spacing.timesteps(200, steps, abar)
    assert kept.shape == (steps,) and kept.dtype == torch.int64
    assert (kept[1:] > kept[:-1]).all() and kept[-1] == 199
    if steps > 1:
        assert kept[0] == 0
    if steps == 200:
        assert torch.equal(kept, torch.arange(200))


def test_noise_level_spacings_need_the_schedule_and_a_finite_noise_level():
    from diffusionkit.schedules import ZeroTerminalSNRSchedule

    with pytest.raises(ValueError, match="pass the schedule's alphas_cumprod"):
        Spacing.KARRAS.timesteps(100, 10)
    zero = ZeroTerminalSNRSchedule(LinearSchedule(100)).alphas_cumprod
    with pytest.raises(ValueError, match="zero terminal SNR"):
        Spacing.LOG_SNR.timesteps(100, 10, zero)
    plan = plan_sampling(LinearSchedule(100), 10, "karras", start_step=60, end_step=9)
    assert plan.visited[0] == 60 and plan.visited[-1] == 10 and plan.stop == 1
