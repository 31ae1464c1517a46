"""Conditioning and classifier-free guidance (Ho & Salimans 2022).

Convention under test: out = out_u + w (out_c - out_u) (eq. 6 with w = 1 + w'), so w = 1 is
plain conditional sampling and w = 0 unconditional.
"""

import pytest
import torch
from oracles import seeded
from torch import nn

from diffusionkit import DDIMSampler, DDPMSampler, DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.guidance import classifier_free_guidance


def class_unet(num_classes=3, cond_channels=0):
    torch.manual_seed(0)  # parameter initialisation only
    net = UNet(
        in_channels=1,
        dim=16,
        dim_mults=(1, 2),
        attns=(False, True),
        groups=8,
        num_classes=num_classes,
        cond_channels=cond_channels,
    )
    with torch.no_grad():  # make the class embedding matter (it starts small)
        if net.class_embed is not None:
            net.class_embed.weight.mul_(50)
    return net


class Recorder(nn.Module):
    """A conditional network that records what it is called with; output depends on labels."""

    num_classes = 4
    cond_channels = 2

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, labels=None, cond=None):
        self.calls.append((x.shape[0], labels, cond))
        shift = 0 if labels is None else labels.float().view(-1, 1, 1, 1) * 0.01
        return 0.1 * x + shift


def test_combination_formula():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.0])
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0), uncond)
    # Ho & Salimans eq. 6 with w' = 2: (1 + w') eps_c - w' eps_u
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0), 3 * cond - 2 * uncond)


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler(0.0)])
def test_guidance_scale_one_is_plain_conditional_sampling(sampler):
    model = DenoiseDiffusion(class_unet(), LinearSchedule(50), sampler)
    labels = torch.tensor([0, 2, 1])
    common = {"labels": labels, "steps": 5, "progress": False}
    plain = model.reverse_sample((3, 1, 8, 8), generator=seeded(0), **common)
    guided = model.reverse_sample((3, 1, 8, 8), generator=seeded(0), guidance_scale=1.0, **common)
    assert torch.equal(plain, guided)
    other = model.reverse_sample(
        (3, 1, 8, 8), generator=seeded(0), steps=5, progress=False, labels=torch.tensor([1, 0, 2])
    )
    assert not torch.allclose(plain, other, atol=1e-3)  # labels matter to this network


class TwoPassGuided(nn.Module):
    """Reference: guidance computed with two separate, unbatched network passes."""

    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x, t, labels=None, cond=None):
        out_c = self.net(x, t, labels=labels, cond=cond)
        null_labels = None if labels is None else torch.full_like(labels, -1)
        null_cond = None if cond is None else torch.zeros_like(cond)
        out_u = self.net(x, t, labels=null_labels, cond=null_cond)
        return out_u + self.scale * (out_c - out_u)


@pytest.mark.parametrize("sampler", [DDPMSampler(), DDIMSampler(0.0)])
@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_batched_guidance_equals_two_separate_passes(sampler, scale):
    """In float64, so that batching 2B instead of B cannot hide behind float32 rounding."""
    net = class_unet(num_classes=3, cond_channels=1).double()
    model = DenoiseDiffusion(net, LinearSchedule(50), sampler)
    reference = DenoiseDiffusion(TwoPassGuided(net, scale), LinearSchedule(50), sampler)
    labels = torch.tensor([0, 2])
    cond = torch.rand(2, 1, 8, 8, generator=seeded(7), dtype=torch.float64) * 2 - 1
    common = {"labels": labels, "cond": cond, "steps": 6, "progress": False}
    guided = model.reverse_sample((2, 1, 8, 8), generator=seeded(0), guidance_scale=scale, **common)
    expected = reference.reverse_sample((2, 1, 8, 8), generator=seeded(0), **common)
    assert guided.dtype == torch.float64
    torch.testing.assert_close(guided, expected, rtol=1e-9, atol=1e-9)
    conditional = model.reverse_sample((2, 1, 8, 8), generator=seeded(0), **common)
    assert not torch.allclose(guided, conditional, atol=1e-3)  # guidance changed something


def test_one_forward_of_2b_per_step_with_the_null_condition_in_the_second_half():
    net = Recorder()
    model = DenoiseDiffusion(net, LinearSchedule(100))
    labels = torch.tensor([3, 0, 1])
    cond = torch.ones(3, 2, 4, 4)
    model.reverse_sample(
        (3, 1, 4, 4), labels=labels, cond=cond, guidance_scale=2.5, steps=7, progress=False
    )
    assert len(net.calls) == 7
    for batch, seen_labels, seen_cond in net.calls:
        assert batch == 6
        assert seen_labels.tolist() == [3, 0, 1, -1, -1, -1]
        assert torch.equal(seen_cond[:3], cond) and torch.equal(
            seen_cond[3:], torch.zeros_like(cond)
        )
    net.calls.clear()
    model.reverse_sample((3, 1, 4, 4), labels=2, steps=3, progress=False)  # one label for all
    assert [(b, lab.tolist()) for b, lab, _ in net.calls] == [(3, [2, 2, 2])] * 3


def test_cond_only_guidance_drops_the_image():
    net = Recorder()
    model = DenoiseDiffusion(net, LinearSchedule(100))
    cond = torch.ones(2, 2, 4, 4)
    model.reverse_sample((2, 1, 4, 4), cond=cond, guidance_scale=4.0, steps=2, progress=False)
    for batch, seen_labels, seen_cond in net.calls:
        assert batch == 4 and seen_labels is None
        assert seen_cond[2:].abs().sum() == 0 and torch.equal(seen_cond[:2], cond)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"labels": torch.tensor([0, 3])},
            ValueError,
            r"labels must lie in \[0, 2\].*got values in \[0, 3\]",
        ),
        ({"labels": torch.tensor([-2, 0])}, ValueError, "labels must lie in"),
        ({"labels": 5}, ValueError, "labels must lie in"),
        ({"labels": torch.tensor([0, 1, 2])}, ValueError, r"labels must be shaped \(2,\)"),
        ({"labels": torch.tensor([0.0, 1.0])}, TypeError, "integer class indices"),
        (
            {"labels": torch.tensor([0, 1]), "guidance_scale": -1.0},
            ValueError,
            "guidance_scale must be",
        ),
        (
            {"labels": torch.tensor([0, 1]), "guidance_scale": "3"},
            TypeError,
            "guidance_scale must be",
        ),
        ({"guidance_scale": 3.0}, ValueError, "guidance_scale needs a condition"),
        ({"cond": torch.zeros(2, 1, 8, 8)}, ValueError, "without cond_channels"),
    ],
)
def test_bad_conditioning_gets_clear_errors(kwargs, error, match):
    model = DenoiseDiffusion(class_unet(num_classes=3), LinearSchedule(50))
    with pytest.raises(error, match=match):
        model.reverse_sample((2, 1, 8, 8), steps=2, progress=False, **kwargs)


def test_labels_for_an_unconditional_network_and_mis_shaped_cond_are_refused():
    plain = DenoiseDiffusion(class_unet(num_classes=None), LinearSchedule(50))
    with pytest.raises(ValueError, match="built without classes"):
        plain.reverse_sample((2, 1, 8, 8), labels=torch.tensor([0, 1]), progress=False)
    with pytest.raises(ValueError, match="built without classes"):
        plain.loss(torch.zeros(2, 1, 8, 8), labels=torch.tensor([0, 1]))
    image = DenoiseDiffusion(class_unet(num_classes=None, cond_channels=2), LinearSchedule(50))
    for cond, match in (
        (torch.zeros(2, 1, 8, 8), "must have 2 channels"),
        (torch.zeros(2, 2, 4, 4), r"cond must be shaped \(2, C_cond, 8, 8\)"),
        (torch.zeros(1, 2, 8, 8), "cond must be shaped"),
    ):
        with pytest.raises(ValueError, match=match):
            image.reverse_sample((2, 1, 8, 8), cond=cond, progress=False)


# ------------------------------------------------------------------ training


class LabelEcho(nn.Module):
    """Records the labels and cond it is trained with; output depends on both."""

    num_classes = 10
    cond_channels = 1

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))
        self.seen = []

    def forward(self, x, t, labels=None, cond=None):
        self.seen.append((labels, cond))
        out = self.w * x
        if labels is not None:
            out = out + labels.float().view(-1, 1, 1, 1) / 10
        if cond is not None:
            out = out + cond
        return out


def test_cond_drop_prob_drops_labels_and_cond_jointly_per_sample_from_the_generator():
    net = LabelEcho()
    model = DenoiseDiffusion(net, LinearSchedule(100))
    batch = 4000
    x0 = torch.zeros(batch, 1, 2, 2)
    labels = torch.randint(0, 10, (batch,), generator=seeded(0))
    cond = torch.ones(batch, 1, 2, 2)
    model.loss(x0, labels=labels, cond=cond, cond_drop_prob=0.3, generator=seeded(1))
    seen_labels, seen_cond = net.seen[-1]
    dropped = seen_labels == -1
    # Binomial(4000, 0.3): standard error 0.0072
    assert abs(dropped.float().mean().item() - 0.3) < 0.03
    assert torch.equal(seen_labels[~dropped], labels[~dropped])
    assert torch.equal(seen_cond[:, 0, 0, 0] == 0, dropped)  # the same samples lose both
    model.loss(x0, labels=labels, cond=cond, cond_drop_prob=0.3, generator=seeded(1))
    assert torch.equal(net.seen[-1][0], seen_labels)  # same seed, same drops


def test_cond_drop_prob_extremes():
    net = LabelEcho()
    model = DenoiseDiffusion(net, LinearSchedule(100))
    x0 = torch.rand(8, 1, 2, 2, generator=seeded(0)) * 2 - 1
    labels = torch.arange(8)
    cond = torch.ones(8, 1, 2, 2)
    t = torch.arange(8) * 10
    noise = torch.randn(8, 1, 2, 2, generator=seeded(1))
    all_dropped = model.loss(
        x0, t, noise, labels=labels, cond=cond, cond_drop_prob=1.0, generator=seeded(2)
    )
    null = model.loss(x0, t, noise, labels=torch.full((8,), -1), cond=torch.zeros_like(cond))
    assert all_dropped.item() == pytest.approx(null.item(), rel=1e-6)
    kept = model.loss(x0, t, noise, labels=labels, cond=cond, cond_drop_prob=0.0)
    assert kept.item() != pytest.approx(null.item(), rel=1e-3)
    per_sample = [seeded(s) for s in range(8)]
    model.loss(x0, t, noise, labels=labels, cond_drop_prob=0.5, generator=per_sample)
    first = net.seen[-1][0]
    model.loss(
        x0, t, noise, labels=labels, cond_drop_prob=0.5, generator=[seeded(s) for s in range(8)]
    )
    assert torch.equal(net.seen[-1][0], first)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cond_drop_prob": 0.1}, "needs a condition to drop"),
        (
            {"cond_drop_prob": 1.5, "labels": torch.zeros(2, dtype=torch.int64)},
            "cond_drop_prob must be",
        ),
        ({"labels": torch.tensor([0, 10])}, r"labels must lie in \[0, 9\]"),
    ],
)
def test_bad_training_conditioning(kwargs, match):
    model = DenoiseDiffusion(LabelEcho(), LinearSchedule(100))
    with pytest.raises(ValueError, match=match):
        model.loss(torch.zeros(2, 1, 2, 2), **kwargs)


def test_a_guided_class_conditional_unet_trains_and_samples():
    """End to end with the real UNet: loss with dropout backpropagates; guided sampling runs."""
    model = DenoiseDiffusion(class_unet(num_classes=3, cond_channels=1), LinearSchedule(50))
    x0 = torch.rand(6, 1, 8, 8, generator=seeded(0)) * 2 - 1
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    cond = torch.rand(6, 1, 8, 8, generator=seeded(1)) * 2 - 1
    loss = model.loss(x0, labels=labels, cond=cond, cond_drop_prob=0.2, generator=seeded(2))
    loss.backward()
    assert model.net.class_embed.weight.grad is not None
    out = model.reverse_sample(
        (6, 1, 8, 8), labels=labels, cond=cond, guidance_scale=2.0, steps=3, progress=False
    )
    assert out.shape == (6, 1, 8, 8) and torch.isfinite(out).all()
