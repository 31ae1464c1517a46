"""Samplers by name: get_sampler, names in reverse_sample and the constructor, user samplers."""

from typing import Any

import pytest
import torch
from oracles import GaussianOracle, seeded

from diffusionkit import (
    DDIMSampler,
    DDPMSampler,
    DenoiseDiffusion,
    LinearSchedule,
    PosteriorMeanSampler,
    Sampler,
    get_sampler,
)
from diffusionkit.samplers import SAMPLERS


class HalfwaySampler(Sampler):
    """A user sampler: deterministic, steps to the posterior mean of a scaled x0 estimate."""

    name = "test-halfway"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def step(self, x_t, eps, x0, coef, generator=None):
        return coef.posterior_mean_coef_x0 * self.scale * x0 + coef.posterior_mean_coef_xt * x_t

    def config(self) -> dict[str, Any]:
        return {"scale": self.scale}


if HalfwaySampler.name not in SAMPLERS:
    SAMPLERS.register(HalfwaySampler, HalfwaySampler.name)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("ddpm", {}, DDPMSampler()),
        ("DDPMSampler", {"variance": "beta"}, DDPMSampler(variance="beta")),
        ("posterior-mean", {"clip_x0": False}, PosteriorMeanSampler(clip_x0=False)),
        ("ddim", {}, DDIMSampler()),
        ("DDIMSampler", {"eta": 0.5}, DDIMSampler(eta=0.5)),
        ("test-halfway", {"scale": 0.5}, HalfwaySampler(0.5)),
    ],
)
def test_names_build_the_same_sampler_as_the_class(name, kwargs, expected):
    built = get_sampler(name, **kwargs)
    assert type(built) is type(expected) and built.config() == expected.config()


def test_objects_and_classes_pass_through():
    sampler = DDIMSampler(0.3)
    assert get_sampler(sampler) is sampler
    assert get_sampler(DDIMSampler, eta=0.3) == sampler
    with pytest.raises(TypeError, match="only when sampler is a name or a class"):
        get_sampler(sampler, eta=0.5)


@pytest.mark.parametrize(
    ("arg", "kwargs", "error", "match"),
    [
        ("dpm-solver", {}, ValueError, r"unknown sampler 'dpm-solver'; valid names: .*'ddim'"),
        ("ddim", {"steps": 5}, ValueError, "invalid arguments for sampler DDIMSampler"),
        ("ddim", {"eta": 2.0}, ValueError, "eta must be"),
        (3, {}, TypeError, "sampler must be a Sampler"),
        (int, {}, TypeError, "sampler must be a Sampler"),
    ],
)
def test_bad_names_and_arguments(arg, kwargs, error, match):
    with pytest.raises(error, match=match):
        get_sampler(arg, **kwargs)


def test_unknown_name_lists_every_registered_name():
    with pytest.raises(ValueError) as info:
        get_sampler("nope")
    for name in ("ddpm", "posterior-mean", "ddim", "test-halfway", "DDIMSampler"):
        assert repr(name) in str(info.value)


def test_a_name_in_reverse_sample_equals_the_object():
    schedule = LinearSchedule(100)
    model = DenoiseDiffusion(GaussianOracle(schedule, 0.2, 0.25), schedule)
    by_name = model.reverse_sample(
        (8, 1, 2, 2), generator=seeded(0), sampler="ddim", steps=10, progress=False
    )
    by_obj = model.reverse_sample(
        (8, 1, 2, 2), generator=seeded(0), sampler=DDIMSampler(), steps=10, progress=False
    )
    default = model.reverse_sample((8, 1, 2, 2), generator=seeded(0), steps=10, progress=False)
    assert torch.equal(by_name, by_obj)
    assert not torch.allclose(by_name, default)  # the name was not ignored (default is DDPM)


def test_a_user_registered_sampler_works_by_name_end_to_end():
    schedule = LinearSchedule(100)
    model = DenoiseDiffusion(GaussianOracle(schedule, 0.2, 0.25), schedule, sampler="test-halfway")
    assert isinstance(model.sampler, HalfwaySampler)
    x = model.reverse_sample((8, 1, 2, 2), generator=seeded(0), steps=10, progress=False)
    y = model.reverse_sample(
        (8, 1, 2, 2), generator=seeded(0), steps=10, progress=False, sampler=HalfwaySampler()
    )
    assert torch.equal(x, y)
    # its own arithmetic ran: with scale 0 the last step returns coef_xt * x_t = 0
    zero = model.reverse_sample(
        (8, 1, 2, 2), generator=seeded(0), steps=10, progress=False, sampler=HalfwaySampler(0.0)
    )
    assert torch.equal(zero, torch.zeros_like(zero))


def test_constructor_accepts_names():
    model = DenoiseDiffusion(torch.nn.Identity(), LinearSchedule(100), sampler="ddim")
    assert model.sampler == DDIMSampler()
