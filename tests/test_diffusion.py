"""DenoiseDiffusion: loss, predictions, sampling loop, reproducibility, bad input."""

import pytest
import torch
from oracles import GaussianOracle, seeded
from torch import nn

from diffusionkit import (
    CosineSchedule,
    DDPMSampler,
    DenoiseDiffusion,
    LinearSchedule,
    PosteriorMeanSampler,
    UNet,
)


def tiny_unet(channels=1, **kwargs):
    return UNet(
        in_channels=channels, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8, **kwargs
    )


class PlainNet(nn.Module):
    """A user network that is a plain nn.Module, not a Denoiser."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x) + t.float().view(-1, 1, 1, 1) / 1000


def test_defaults_are_fresh_objects_per_instance():
    a, b = DenoiseDiffusion(tiny_unet()), DenoiseDiffusion(tiny_unet())
    assert isinstance(a.schedule, LinearSchedule) and a.schedule.timesteps == 1000
    assert isinstance(a.sampler, DDPMSampler)
    assert a.schedule is not b.schedule and a.sampler is not b.sampler
    assert a.prediction == "eps" and a.net is not b.net


def test_schedule_is_not_in_the_state_dict():
    model = DenoiseDiffusion(tiny_unet())
    assert all(key.startswith("net.") for key in model.state_dict())


def test_small_unet_overfits_one_batch():
    """Fixed x0, t and noise make the loss a regression the network can drive down."""
    torch.manual_seed(0)  # parameter initialisation only
    model = DenoiseDiffusion(tiny_unet(), LinearSchedule(100))
    gen = seeded(0)
    x0 = torch.rand(8, 1, 8, 8, generator=gen) * 2 - 1
    t = torch.randint(0, 100, (8,), generator=gen)
    noise = torch.randn(8, 1, 8, 8, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(x0, t, noise).item()
    for _ in range(150):
        opt.zero_grad()
        loss = model.loss(x0, t, noise)
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_targets_and_predictions_are_consistent(prediction):
    schedule = CosineSchedule(100)
    net = GaussianOracle(schedule, 0.1, 0.3, prediction)
    model = DenoiseDiffusion(net, schedule, prediction=prediction)
    x0 = (torch.randn(16, 1, 4, 4, generator=seeded(0)) * 0.3 + 0.1).clamp(-1, 1)
    t = torch.randint(0, 100, (16,), generator=seeded(1))
    x_t, noise = model.forward_sample(x0, t, generator=seeded(2))
    eps_hat, x0_hat = model.predict_eps(x_t, t), model.predict_x0(x_t, t)
    abar = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    # every prediction type splits x_t into the same pair
    torch.testing.assert_close(
        abar.sqrt() * x0_hat + (1 - abar).sqrt() * eps_hat, x_t, rtol=1e-4, atol=1e-4
    )
    eps_oracle = DenoiseDiffusion(GaussianOracle(schedule, 0.1, 0.3, "eps"), schedule)
    torch.testing.assert_close(eps_hat, eps_oracle.predict_eps(x_t, t), rtol=1e-4, atol=1e-4)
    # the loss is the MSE against the chosen target
    target = {"eps": noise, "x0": x0, "v": abar.sqrt() * noise - (1 - abar).sqrt() * x0}[prediction]
    expected = (net(x_t, t) - target).square().mean()
    torch.testing.assert_close(model.loss(x0, t, noise), expected, rtol=1e-5, atol=1e-6)


def test_loss_draws_t_uniformly_from_the_generator():
    model = DenoiseDiffusion(PlainNet(), LinearSchedule(50))
    x0 = torch.zeros(4, 1, 4, 4)
    assert model.loss(x0, generator=seeded(5)) == model.loss(x0, generator=seeded(5))
    assert model.loss(x0, generator=seeded(5)) != model.loss(x0, generator=seeded(6))


def test_same_seed_same_samples_different_seed_different_samples():
    model = DenoiseDiffusion(tiny_unet(), LinearSchedule(50))
    a = model.reverse_sample((2, 1, 8, 8), generator=seeded(0), progress=False)
    b = model.reverse_sample((2, 1, 8, 8), generator=seeded(0), progress=False)
    c = model.reverse_sample((2, 1, 8, 8), generator=seeded(1), progress=False)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_per_sample_generators_make_samples_independent_of_the_batch():
    model = DenoiseDiffusion(tiny_unet(), LinearSchedule(50))
    batch = model.reverse_sample(
        (3, 1, 8, 8), generator=[seeded(s) for s in (7, 8, 9)], progress=False
    )
    alone = model.reverse_sample((1, 1, 8, 8), generator=[seeded(8)], progress=False)
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one per sample"):
        model.reverse_sample((2, 1, 8, 8), generator=[seeded(0)], progress=False)


def test_reverse_sample_restores_training_mode_and_does_not_clamp_unless_asked():
    model = DenoiseDiffusion(PlainNet(), LinearSchedule(50), PosteriorMeanSampler(clip_x0=False))
    with torch.no_grad():
        model.net.conv.weight.fill_(0.0)
        model.net.conv.bias.fill_(-3.0)  # predicts a large eps: x0 far outside [-1, 1]
    model.train()
    raw = model.reverse_sample((2, 1, 4, 4), generator=seeded(0), progress=False)
    assert model.net.training
    assert raw.abs().max() > 1
    clipped = model.reverse_sample((2, 1, 4, 4), generator=seeded(0), progress=False, clip=True)
    assert clipped.abs().max() <= 1
    assert not clipped.requires_grad


def test_trajectory_and_callback():
    model = DenoiseDiffusion(tiny_unet(), LinearSchedule(30))
    seen = []
    traj = model.reverse_sample(
        (2, 1, 8, 8),
        generator=seeded(0),
        progress=False,
        return_intermediates=True,
        callback=lambda step, t, x, x0: seen.append((step, t)),
    )
    assert traj.x_t.shape == (31, 2, 1, 8, 8) and traj.x0_pred.shape == (30, 2, 1, 8, 8)
    assert traj.timesteps.tolist() == list(range(29, -1, -1))
    assert seen == [(i, 29 - i) for i in range(30)]
    plain = model.reverse_sample((2, 1, 8, 8), generator=seeded(0), progress=False)
    assert torch.equal(plain, traj.samples) and torch.equal(traj.x_t[-1], plain)


def test_steps_equal_to_t_reproduce_the_full_loop_and_fewer_steps_visit_fewer_timesteps():
    model = DenoiseDiffusion(tiny_unet(), LinearSchedule(40))
    full = model.reverse_sample((2, 1, 8, 8), generator=seeded(0), progress=False)
    same = model.reverse_sample((2, 1, 8, 8), generator=seeded(0), progress=False, steps=40)
    assert torch.equal(full, same)
    traj = model.reverse_sample(
        (2, 1, 8, 8), generator=seeded(0), progress=False, steps=4, return_intermediates=True
    )
    assert traj.timesteps.tolist() == [39, 29, 19, 9]


def test_plain_module_networks_are_accepted():
    model = DenoiseDiffusion(PlainNet(), LinearSchedule(50))
    assert model.loss(torch.zeros(2, 1, 4, 4)).ndim == 0
    assert model.reverse_sample((2, 1, 5, 3), progress=False, generator=seeded(0)).shape == (
        2,
        1,
        5,
        3,
    )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: m.loss(torch.zeros(2, 3, 8, 8)), ValueError, "expects 1 input channels, got 3"),
        (lambda m: m.loss(torch.zeros(2, 1, 7, 8)), ValueError, "divisible by 2"),
        (lambda m: m.loss(torch.zeros(2, 1, 8)), ValueError, r"\(B, C, H, W\)"),
        (lambda m: m.loss(torch.zeros(2, 1, 8, 8, dtype=torch.int64)), TypeError, "floating-point"),
        (lambda m: m.loss(torch.full((2, 1, 8, 8), float("nan"))), ValueError, "NaN"),
        (lambda m: m.loss(torch.full((2, 1, 8, 8), 200.0)), ValueError, r"scaled to \[-1, 1\]"),
        (
            lambda m: m.loss(torch.zeros(2, 1, 8, 8), t=torch.tensor([0, 50])),
            ValueError,
            r"\[0, 49\]",
        ),
        (lambda m: m.loss(torch.zeros(2, 1, 8, 8), t=torch.tensor([-1, 0])), ValueError, "0-based"),
        (
            lambda m: m.loss(torch.zeros(2, 1, 8, 8), t=torch.tensor([0.5, 1.0])),
            TypeError,
            "integer",
        ),
        (
            lambda m: m.loss(torch.zeros(2, 1, 8, 8), t=torch.tensor([0, 1, 2])),
            ValueError,
            r"shaped \(2,\)",
        ),
        (
            lambda m: m.loss(torch.zeros(2, 1, 8, 8), noise=torch.zeros(1, 1, 8, 8)),
            ValueError,
            "noise shape",
        ),
        (lambda m: m.forward_sample(torch.zeros(2, 1, 8, 8), "3"), TypeError, "int64"),
        (lambda m: m.reverse_sample((2, 3, 8, 8), progress=False), ValueError, "input channels"),
        (lambda m: m.reverse_sample((2, 1, 5, 6), progress=False), ValueError, "divisible"),
        (lambda m: m.reverse_sample((2, 1, 8), progress=False), ValueError, "shape must be"),
        (
            lambda m: m.reverse_sample((2, 1, 8, 8), steps=51, progress=False),
            ValueError,
            "steps must be",
        ),
        (
            lambda m: m.reverse_sample((2, 1, 8, 8), sampler=object(), progress=False),
            TypeError,
            "Sampler",
        ),
        (
            lambda m: m.reverse_sample((2, 1, 8, 8), sampler="dpm-solver", progress=False),
            ValueError,
            "valid names: .*'ddim'",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(call, error, match):
    model = DenoiseDiffusion(tiny_unet(), LinearSchedule(50))
    with pytest.raises(error, match=match):
        call(model)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"net": "unet"}, TypeError, "nn.Module"),
        ({"schedule": "linear"}, TypeError, "NoiseSchedule"),
        ({"sampler": 3}, TypeError, "Sampler"),
        ({"sampler": "dpm-solver"}, ValueError, "unknown sampler"),
        ({"prediction": "score"}, ValueError, "prediction must be one of"),
    ],
)
def test_invalid_constructor_arguments(kwargs, error, match):
    args = {"net": tiny_unet()} | kwargs
    with pytest.raises(error, match=match):
        DenoiseDiffusion(**args)


def test_network_returning_the_wrong_shape_is_reported():
    class Bad(nn.Module):
        def forward(self, x, t):
            return x[:, :1]

    model = DenoiseDiffusion(Bad(), LinearSchedule(50))
    with pytest.raises(ValueError, match="shaped like its input"):
        model.loss(torch.zeros(2, 3, 4, 4))
