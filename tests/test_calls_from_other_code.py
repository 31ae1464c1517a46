"""Calls users bring from other DDPM code (issue 14): ``DenoiseDiffusion(net, T)`` and
image-to-image by ``strength``."""

from __future__ import annotations

import pytest
import torch
from oracles import GaussianOracle, seeded

from diffusionkit import DenoiseDiffusion, LinearSchedule


def test_an_int_schedule_is_the_linear_schedule_of_that_many_steps(tmp_path):
    oracle = GaussianOracle(LinearSchedule(100), 0.1, 0.5)
    model = DenoiseDiffusion(oracle, 100)
    assert model.schedule == LinearSchedule(100) and model.timesteps == 100
    assert DenoiseDiffusion(oracle, 1000).schedule == LinearSchedule(1000)
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        DenoiseDiffusion(oracle, True)
    with pytest.raises(ValueError, match="timesteps must be a positive int"):
        DenoiseDiffusion(oracle, 0)


@pytest.mark.parametrize(("strength", "start_step"), [(1.0, 99), (0.5, 49), (0.3, 29), (0.001, 0)])
def test_strength_is_the_start_step_it_names(strength, start_step):
    schedule = LinearSchedule(100)
    model = DenoiseDiffusion(GaussianOracle(schedule, 0.1, 0.5), schedule)
    x_init = torch.rand(3, 1, 2, 2, generator=seeded(0)) * 2 - 1
    assert model.start_step_of(strength) == start_step
    by_strength = model.reverse_sample(
        x_init=x_init, strength=strength, generator=seeded(1), progress=False, steps=None
    )
    by_step = model.reverse_sample(
        x_init=x_init, start_step=start_step, generator=seeded(1), progress=False
    )
    assert torch.equal(by_strength, by_step)
    traj = model.reverse_sample(
        x_init=x_init, strength=strength, sampler="dpm++2m", steps=1, generator=seeded(2),
        progress=False, return_intermediates=True,
    )  # fmt: skip
    assert traj.timesteps.tolist() == [start_step]


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5, float("nan"), True, "0.5"])
def test_bad_strengths_are_refused(strength):
    schedule = LinearSchedule(100)
    model = DenoiseDiffusion(GaussianOracle(schedule, 0.1, 0.5), schedule)
    with pytest.raises(ValueError, match=r"strength must be a number in \(0, 1\]"):
        model.reverse_sample(x_init=torch.zeros(1, 1, 2, 2), strength=strength, progress=False)


def test_strength_needs_x_init_and_excludes_start_step():
    schedule = LinearSchedule(100)
    model = DenoiseDiffusion(GaussianOracle(schedule, 0.1, 0.5), schedule)
    with pytest.raises(ValueError, match="needs both x_init"):
        model.reverse_sample((1, 1, 2, 2), strength=0.5, progress=False)
    with pytest.raises(ValueError, match="start_step or strength, not both"):
        model.reverse_sample(
            x_init=torch.zeros(1, 1, 2, 2), strength=0.5, start_step=10, progress=False
        )
