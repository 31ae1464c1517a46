"""Inpainting (RePaint replacement and resampling) through reverse_sample(x_known=, mask=).

The statistical test uses correlated two-pixel Gaussian data, x0 = (u, k) ~ N(m, Σ), whose
exact denoiser is linear: x_t ~ N(a m, Σ_t) with Σ_t = a² Σ + b² I (a = sqrt(abar_t),
b = sqrt(1 - abar_t)), so E[eps | x_t] = b Σ_t⁻¹ (x_t - a m). Knowing k = k0, the unknown
pixel's exact conditional is N(m_u + ρ s_u / s_k (k0 - m_k), s_u² (1 - ρ²)).

RePaint's replacement is an approximation: the known pixel is re-noised independently at
every step, so the unknown one learns about k0 only through noisy copies and lags behind.
Measured with m = (0.1, -0.2), s = (0.3, 0.4), ρ = 0.8, k0 = 0.3 (exact conditional mean 0.4,
std 0.18; marginal 0.1, 0.3), linear schedule, all 1,000 steps, 4,096 values:

============================  ==============  ==============
resample_jumps                mean error      std error
============================  ==============  ==============
0 (plain replacement)         -0.088          +0.015
4                             -0.018          -0.002
9                             -0.011          -0.008
19 (8,192 values)             -0.001          -0.013
============================  ==============  ==============

With fewer steps the resampled chain is also underdispersed (the few-step DDPM bias of
tests/test_sampling_strided.py, compounded by the jumps): 250 steps, 9 jumps: -0.009, -0.022.
"""

import pytest
import torch
from oracles import seeded
from torch import nn

from diffusionkit import DDIMSampler, DenoiseDiffusion, LinearSchedule, UNet


class Gaussian2DOracle(nn.Module):
    """The exact eps for two-pixel images (B, 1, 1, 2) with x0 ~ N(mean, cov)."""

    def __init__(self, schedule, mean, cov):
        super().__init__()
        abar = schedule.alphas_cumprod.view(-1, 1, 1)
        cov = torch.as_tensor(cov, dtype=torch.float64)
        cov_t = abar * cov + (1 - abar) * torch.eye(2, dtype=torch.float64)  # (T, 2, 2)
        self.gain = ((1 - abar).sqrt() * torch.linalg.inv(cov_t)).float()  # b Σ_t⁻¹
        self.shift = (abar.sqrt().view(-1, 1) * torch.tensor(mean, dtype=torch.float64)).float()

    def forward(self, x, t):
        centred = x.reshape(-1, 2) - self.shift[t]  # (B, 2): x_t - a m
        return torch.einsum("bij,bj->bi", self.gain[t], centred).reshape(x.shape)


MEAN, STDS, RHO, K0 = (0.1, -0.2), (0.3, 0.4), 0.8, 0.3
COV = [
    [STDS[0] ** 2, RHO * STDS[0] * STDS[1]],
    [RHO * STDS[0] * STDS[1], STDS[1] ** 2],
]
COND_MEAN = MEAN[0] + RHO * STDS[0] / STDS[1] * (K0 - MEAN[1])  # 0.4
COND_STD = STDS[0] * (1 - RHO**2) ** 0.5  # 0.18
KNOWN = torch.tensor([0.0, K0]).view(1, 1, 1, 2)
MASK = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)


def two_pixel_model(schedule=None):
    schedule = schedule or LinearSchedule(1000)
    return DenoiseDiffusion(Gaussian2DOracle(schedule, MEAN, COV), schedule)


def test_the_two_pixel_oracle_generates_its_distribution():
    """Guard for the oracle itself: unconditional sampling recovers mean, stds and ρ."""
    x = two_pixel_model().reverse_sample((4096, 1, 1, 2), generator=seeded(0), progress=False)
    u, k = x[:, 0, 0, 0], x[:, 0, 0, 1]
    assert abs(u.mean().item() - MEAN[0]) < 0.02 and abs(k.mean().item() - MEAN[1]) < 0.02
    assert abs(u.std().item() - STDS[0]) < 0.015 and abs(k.std().item() - STDS[1]) < 0.015
    assert abs(torch.corrcoef(torch.stack([u, k]))[0, 1].item() - RHO) < 0.03


def test_resampled_inpainting_gives_the_conditional_distribution():
    """RePaint with 4 jumps, all 1,000 steps: measured mean -0.020, std -0.007 (2,048 values).

    Tolerances: that bias plus 4 Monte Carlo standard errors (0.18 / sqrt(2048) ≈ 0.004 for
    the mean, 0.003 for the std). Plain replacement (-0.08) and the marginal (-0.3) fail it.
    """
    model = two_pixel_model()
    common = {"x_known": KNOWN, "mask": MASK, "progress": False}
    x = model.reverse_sample((2048, 1, 1, 2), resample_jumps=4, generator=seeded(0), **common)
    assert (x[..., 1] == K0).all()
    u = x[..., 0]
    assert abs(u.mean().item() - COND_MEAN) < 0.036
    assert abs(u.std().item() - COND_STD) < 0.02
    plain = model.reverse_sample((2048, 1, 1, 2), generator=seeded(1), **common)[..., 0]
    # without resampling the unknown pixel lags toward its marginal mean, as measured
    assert MEAN[0] + 0.15 < plain.mean().item() < COND_MEAN - 0.05
    assert abs(u.mean().item() - COND_MEAN) < abs(plain.mean().item() - COND_MEAN) / 3


class Recorder(nn.Module):
    """Records the network's inputs; predicts eps = 0 (x0_hat = x_t / sqrt(abar))."""

    def __init__(self, channels=1):
        super().__init__()
        self.calls = []
        self.in_channels = channels

    def forward(self, x, t):
        self.calls.append((x.clone(), t.clone()))
        return torch.zeros_like(x)


def test_known_region_is_noised_to_each_steps_timestep():
    """At the network call at t the known pixel is sqrt(abar_t) k0 + sqrt(1 - abar_t) z."""
    schedule = LinearSchedule(1000)
    net = Recorder()
    model = DenoiseDiffusion(net, schedule)
    model.reverse_sample(
        (4096, 1, 1, 2), x_known=KNOWN, mask=MASK, steps=8, generator=seeded(0), progress=False
    )
    assert len(net.calls) == 8
    for x, t in net.calls:
        abar = schedule.alphas_cumprod[t[0]].item()
        known = x[:, 0, 0, 1]
        # standard errors: sqrt((1 - abar) / n) for the mean, about half that for the std
        se = ((1 - abar) / 4096) ** 0.5
        assert abs(known.mean().item() - abar**0.5 * K0) < 5 * se + 1e-6
        assert abs(known.std().item() - (1 - abar) ** 0.5) < 5 * se + 1e-6


def test_resampling_repeats_every_step_but_the_last():
    net = Recorder()
    model = DenoiseDiffusion(net, LinearSchedule(100))
    seen = []
    model.reverse_sample(
        (2, 1, 1, 2),
        x_known=KNOWN,
        mask=MASK,
        steps=5,
        resample_jumps=2,
        generator=seeded(0),
        progress=False,
        callback=lambda step, t, x, x0: seen.append(t),
    )
    called = [int(t[0]) for _, t in net.calls]
    assert seen == [99, 79, 59, 39, 19]  # one callback per step
    assert called == [99] * 3 + [79] * 3 + [59] * 3 + [39] * 3 + [19]
    net.calls.clear()  # a chain that ends at a noisy x_e: its last step is not repeated either
    model.reverse_sample(
        (2, 1, 1, 2), x_known=KNOWN, mask=MASK, end_step=49, steps=2, resample_jumps=1,
        progress=False,
    )  # fmt: skip
    assert [int(t[0]) for _, t in net.calls] == [99, 99, 74]


@pytest.mark.parametrize("sampler", ["ddpm", "posterior-mean", DDIMSampler(0.0)])
@pytest.mark.parametrize(
    "mask_shape", [(3, 1, 8, 8), (1, 1, 8, 8), (3, 2, 8, 8), (1, 2, 8, 8)], ids=str
)
def test_known_pixels_come_back_exactly(sampler, mask_shape):
    torch.manual_seed(0)  # network initialisation only
    net = UNet(in_channels=2, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8)
    model = DenoiseDiffusion(net, LinearSchedule(100))
    gen = seeded(1)
    x_known = torch.rand(3, 2, 8, 8, generator=gen) * 2 - 1
    mask = torch.rand(mask_shape, generator=gen) < 0.5
    out = model.reverse_sample(
        x_known=x_known,
        mask=mask.float(),
        sampler=sampler,
        steps=4,
        resample_jumps=1,
        generator=gen,
        progress=False,
    )
    assert out.shape == (3, 2, 8, 8)
    full_mask = mask.expand_as(out)
    assert torch.equal(out[full_mask], x_known[full_mask])
    assert not torch.allclose(out[~full_mask], x_known[~full_mask], atol=0.05)


def test_one_known_image_for_a_batch_and_per_sample_generators():
    model = two_pixel_model(LinearSchedule(100))
    gens = [seeded(s) for s in (3, 4, 5)]
    batch = model.reverse_sample(
        (3, 1, 1, 2), x_known=KNOWN, mask=MASK, generator=gens, progress=False
    )
    alone = model.reverse_sample(
        (1, 1, 1, 2), x_known=KNOWN, mask=MASK, generator=[seeded(4)], progress=False
    )
    torch.testing.assert_close(batch[1:2], alone)
    assert (batch[..., 1] == K0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"mask": torch.ones(2, 1, 4, 8)},
            ValueError,
            r"mask must be shaped \(2 or 1, 1 or 1, 8, 8\)",
        ),
        ({"mask": torch.ones(3, 1, 8, 8)}, ValueError, "mask must be shaped"),
        ({"mask": torch.ones(1, 8, 8)}, ValueError, "mask must be shaped"),
        ({"mask": torch.full((1, 1, 8, 8), 0.5)}, ValueError, "only 0 .* and 1"),
        ({"mask": [[1.0]]}, TypeError, "mask must be a torch.Tensor"),
        (
            {"x_known": torch.zeros(2, 1, 8, 4)},
            ValueError,
            r"x_known must be shaped \(2 or 1, 1, 8, 8\)",
        ),
        ({"x_known": torch.full((2, 1, 8, 8), 3.0)}, ValueError, r"scaled to \[-1, 1\]"),
        ({"x_known": torch.zeros(2, 1, 8, 8, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"mask": None}, ValueError, "needs both x_known"),
        ({"x_known": None}, ValueError, "needs both x_known"),
        ({"resample_jumps": -1}, ValueError, "resample_jumps must be"),
        ({"x_known": None, "mask": None, "resample_jumps": 2}, ValueError, "applies to inpainting"),
    ],
)
def test_bad_inpainting_inputs_get_clear_errors(kwargs, error, match):
    net = UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8)
    model = DenoiseDiffusion(net, LinearSchedule(50))
    args = {"x_known": torch.zeros(2, 1, 8, 8), "mask": torch.ones(1, 1, 8, 8)} | kwargs
    with pytest.raises(error, match=match):
        model.reverse_sample((2, 1, 8, 8), progress=False, **args)
