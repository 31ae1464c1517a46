"""Image-to-image (SDEdit) and partial chains: x_init, start_step, end_step, and their plan."""

import pytest
import torch
from oracles import GaussianOracle, seeded

from diffusionkit import DDIMSampler, DenoiseDiffusion, LinearSchedule, RespacedSchedule, UNet
from diffusionkit.sampling_plan import plan_sampling

MEAN, STD, TOL = 0.2, 0.25, 0.012  # TOL justified in tests/test_samplers.py


def oracle_model(schedule=None, sampler=None):
    schedule = schedule or LinearSchedule(1000)
    return DenoiseDiffusion(GaussianOracle(schedule, MEAN, STD), schedule, sampler)


@pytest.mark.parametrize(
    ("kwargs", "visited"),
    [
        ({}, list(range(99, -1, -1))),
        ({"steps": 4}, [99, 74, 49, 24]),
        ({"start_step": 40}, list(range(40, -1, -1))),
        # trailing over the 41 timesteps 0..40: round(41 - 10.25 j) - 1, halves to even
        ({"start_step": 40, "steps": 4}, [40, 30, 19, 9]),
        ({"start_step": 40, "steps": 4, "spacing": "linspace"}, [40, 27, 13, 0]),
        ({"start_step": 40, "steps": 4, "spacing": "leading"}, [30, 20, 10, 0]),
        ({"end_step": 59}, list(range(99, 59, -1))),
        ({"end_step": 59, "steps": 4}, [99, 89, 79, 69]),
        ({"start_step": 40, "end_step": 9, "steps": 3}, [40, 30, 19]),
    ],
)
def test_the_plan_visits_the_documented_timesteps(kwargs, visited):
    schedule = LinearSchedule(100)
    plan = plan_sampling(schedule, **kwargs)
    assert plan.visited.tolist() == visited
    end = kwargs.get("end_step", -1)
    # the last step lands exactly on abar_{end_step} (1 for a clean result)
    expected_end = 1.0 if end < 0 else schedule.alphas_cumprod[end].item()
    assert plan.end_alpha_cumprod == pytest.approx(expected_end, rel=1e-12)
    assert plan.start_alpha_cumprod == pytest.approx(
        schedule.alphas_cumprod[visited[0]].item(), rel=1e-12
    )


def test_the_full_plan_is_the_models_own_schedule():
    schedule = LinearSchedule(100)
    assert plan_sampling(schedule).schedule is schedule
    assert plan_sampling(schedule, steps=100).schedule is schedule
    assert isinstance(plan_sampling(schedule, start_step=98).schedule, RespacedSchedule)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start_step": 100}, r"start_step must be an int in \[0, 99\]"),
        ({"start_step": -1}, "start_step must be"),
        ({"end_step": -2}, r"end_step must be an int in \[-1, 98\]"),
        ({"start_step": 10, "end_step": 10}, r"end_step must be an int in \[-1, 9\]"),
        ({"start_step": 10, "steps": 12}, r"steps must be an int in \[1, 11\]"),
        ({"start_step": 10, "end_step": 4, "steps": 7}, r"steps must be an int in \[1, 6\]"),
        ({"steps": 0}, "steps must be"),
        ({"spacing": "uniform"}, "uniform"),
    ],
)
def test_bad_plans_get_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_sampling(LinearSchedule(100), **kwargs)


def test_x_init_is_noised_in_closed_form_from_the_callers_generator():
    schedule = LinearSchedule(1000)
    model = oracle_model(schedule)
    x_init = torch.rand(8, 1, 2, 2, generator=seeded(9)) * 2 - 1
    traj = model.reverse_sample(
        x_init=x_init,
        start_step=300,
        steps=10,
        generator=seeded(0),
        progress=False,
        return_intermediates=True,
    )
    abar = schedule.alphas_cumprod[300].item()
    expected = abar**0.5 * x_init + (1 - abar) ** 0.5 * torch.randn(8, 1, 2, 2, generator=seeded(0))
    torch.testing.assert_close(traj.x_t[0], expected)
    assert traj.timesteps[0].item() == 300 and traj.timesteps.numel() == 10


@pytest.mark.parametrize("start_step", [999, 300, 20])
def test_sdedit_with_the_exact_denoiser_keeps_the_data_distribution(start_step):
    """x_init drawn from the data, noised to k and denoised exactly: still the data."""
    model = oracle_model()
    x_init = (MEAN + STD * torch.randn(2048, 1, 2, 2, generator=seeded(1))).clamp(-1, 1)
    x = model.reverse_sample(
        x_init=x_init, start_step=start_step, generator=seeded(0), progress=False
    )
    assert abs(x.mean().item() - MEAN) < TOL
    assert abs(x.std().item() - STD) < TOL
    # the lower the start, the more of x_init survives
    corr = torch.corrcoef(torch.stack([x.flatten(), x_init.flatten()]))[0, 1].item()
    assert (corr > 0.9) if start_step == 20 else (corr < 0.9)


def test_sdedit_moves_an_outlier_toward_the_data():
    """An image far from the data (all 0.9) is pulled to the data mean; more so from higher k."""
    model = oracle_model()
    x_init = torch.full((2048, 1, 2, 2), 0.9)
    means = [
        model.reverse_sample(x_init=x_init, start_step=k, generator=seeded(0), progress=False)
        .mean()
        .item()
        for k in (50, 200, 999)
    ]
    assert 0.9 > means[0] > means[1] > means[2]
    assert abs(means[2] - MEAN) < TOL


@pytest.mark.parametrize("end_step", [100, 500])
def test_end_step_returns_the_marginal_of_that_timestep(end_step):
    """A chain stopped at e gives x_e ~ q(x_e) = N(a m, a² s² + 1 - a²), a = sqrt(abar_e)."""
    schedule = LinearSchedule(1000)
    model = oracle_model(schedule)
    x = model.reverse_sample(
        (2048, 1, 2, 2), end_step=end_step, generator=seeded(0), progress=False
    )
    abar = schedule.alphas_cumprod[end_step].item()
    std = (abar * STD**2 + 1 - abar) ** 0.5
    assert abs(x.mean().item() - abar**0.5 * MEAN) < 4.5 * std / 8192**0.5 + 0.003
    assert abs(x.std().item() - std) < 0.015
    assert x.std().item() > STD + 0.05  # still noisy, not a clean sample


def test_start_and_end_compose_with_a_deterministic_sampler():
    """DDIM (eta = 0) stopped at e returns exactly the x_e of the chain that runs on."""
    schedule = LinearSchedule(1000)
    model = oracle_model(schedule, DDIMSampler(0.0))
    x_init = torch.rand(16, 1, 2, 2, generator=seeded(3)) * 2 - 1
    common = {"x_init": x_init, "start_step": 600, "progress": False}
    full = model.reverse_sample(generator=seeded(0), return_intermediates=True, **common)
    assert full.timesteps.tolist() == list(range(600, -1, -1))
    stopped = model.reverse_sample(
        generator=seeded(0), end_step=299, return_intermediates=True, **common
    )
    assert stopped.timesteps.tolist() == list(range(600, 299, -1))
    # after the 301 steps 600..300 both chains hold x_299
    torch.testing.assert_close(stopped.samples, full.x_t[301], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stopped.x_t, full.x_t[:302], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"start_step": 10}, ValueError, "needs both x_init .* and start_step"),
        ({"x_init": torch.zeros(2, 1, 8, 8)}, ValueError, "needs both x_init"),
        ({"x_init": torch.zeros(2, 1, 8, 8), "start_step": 50}, ValueError, "start_step must be"),
        ({"x_init": torch.zeros(2, 3, 8, 8), "start_step": 5}, ValueError, "x_init must be shaped"),
        ({"x_init": torch.full((2, 1, 8, 8), 2.0), "start_step": 5}, ValueError, r"\[-1, 1\]"),
        (
            {"x_init": torch.zeros(2, 1, 8, 8), "start_step": 5, "end_step": 5},
            ValueError,
            "end_step",
        ),
    ],
)
def test_bad_image_to_image_inputs_get_clear_errors(kwargs, error, match):
    net = UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8)
    model = DenoiseDiffusion(net, LinearSchedule(50))
    with pytest.raises(error, match=match):
        model.reverse_sample((2, 1, 8, 8), progress=False, **kwargs)


def test_shape_comes_from_x_init_and_is_checked_against_it():
    net = UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8)
    model = DenoiseDiffusion(net, LinearSchedule(50))
    x_init = torch.zeros(3, 1, 8, 8)
    out = model.reverse_sample(x_init=x_init, start_step=5, progress=False, generator=seeded(0))
    assert out.shape == (3, 1, 8, 8)
    one = model.reverse_sample((4, 1, 8, 8), x_init=x_init[:1], start_step=5, progress=False)
    assert one.shape == (4, 1, 8, 8)  # one image for the whole batch
    with pytest.raises(ValueError, match="pass shape"):
        model.reverse_sample(progress=False)
