"""The DDPM U-Net: shapes, gradients, the paper's CIFAR-10 configuration, bad input."""

import pytest
import torch
from oracles import seeded

from diffusionkit import Denoiser, UNet
from diffusionkit.networks import NETWORKS

SMALL = {"dim": 16, "dim_mults": (1, 2), "attns": (False, True), "groups": 8}


def test_ddpm_cifar10_config_has_the_published_parameter_count():
    net = UNet(in_channels=3, dim=128, dim_mults=(1, 2, 2, 2), attns=(False, True, False, False))
    assert sum(p.numel() for p in net.parameters()) == 35_746_307
    assert len(list(net.parameters())) == 328


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (SMALL | {"in_channels": 1}, (2, 1, 8, 8)),
        (SMALL | {"in_channels": 3}, (1, 3, 6, 10)),  # non-square
        (SMALL | {"in_channels": 1, "out_channels": 2}, (2, 1, 4, 4)),
        (
            {
                "dim": 8,
                "dim_mults": (1, 2, 4),
                "attns": (True, False, True),
                "groups": 4,
                "n_blocks": (1, 2, 1),
            },
            (3, 3, 12, 8),
        ),
        (
            {"dim": 8, "dim_mults": (1,), "attns": (False,), "groups": 4, "mid_attn": False},
            (2, 3, 5, 7),
        ),
        (SMALL | {"heads": 4, "dropout": 0.1}, (2, 3, 8, 8)),
        (SMALL | {"head_dim": 8, "downsample_padding": 1}, (2, 3, 8, 8)),
    ],
)
def test_output_shapes(config, shape):
    net = UNet(**config)
    t = torch.randint(0, 1000, (shape[0],), generator=seeded(0))
    out = net(torch.randn(shape, generator=seeded(1)), t)
    expected = (shape[0], config.get("out_channels", shape[1]), *shape[2:])
    assert out.shape == expected
    assert isinstance(net, Denoiser)


def test_gradients_reach_every_parameter():
    net = UNet(in_channels=2, num_classes=3, cond_channels=1, **SMALL)
    x = torch.randn(4, 2, 8, 8, generator=seeded(0))
    t = torch.tensor([0, 10, 500, 999])
    out = net(x, t, labels=torch.tensor([0, 1, 2, -1]), cond=torch.randn(4, 1, 8, 8))
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_time_and_labels_change_the_output():
    net = UNet(in_channels=1, num_classes=2, **SMALL)
    for p in net.parameters():  # conv_out is not zero-initialised, but be explicit
        p.data.normal_(0, 0.05, generator=seeded(3))
    x = torch.randn(2, 1, 8, 8, generator=seeded(0))
    t = torch.tensor([3, 3])
    base = net(x, t)
    assert not torch.allclose(base, net(x, torch.tensor([900, 900])))
    assert not torch.allclose(base, net(x, t, labels=torch.tensor([1, 1])))
    # label -1 is the null label, the same as passing no labels at all
    torch.testing.assert_close(base, net(x, t, labels=torch.tensor([-1, -1])))


def test_eval_output_is_deterministic_and_batch_independent():
    net = UNet(in_channels=1, **SMALL).eval()
    x = torch.randn(4, 1, 8, 8, generator=seeded(0))
    t = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        full = net(x, t)
        part = net(x[1:3], t[1:3])
    torch.testing.assert_close(full[1:3], part, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(7, 8), (8, 6), (3, 3)])
def test_unsupported_sizes_say_which_sizes_work(size):
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2, 2), attns=(False, False, False), groups=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        net.check_input_shape((1, 1, *size))


def test_wrong_channel_count_is_reported():
    with pytest.raises(ValueError, match="expects 3 input channels, got 1"):
        UNet(**SMALL).check_input_shape((2, 1, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim_mults": ()}, "dim_mults"),
        ({"attns": (True,)}, "attns needs one bool per level"),
        ({"n_blocks": (1, 2, 3)}, "n_blocks needs one value"),
        ({"n_blocks": 0}, "n_blocks must be"),
        ({"groups": 5}, "groups=5 must divide"),
        ({"dropout": 1.0}, "dropout"),
        ({"heads": 3}, "do not split into 3 heads"),
        ({"num_classes": 0}, "num_classes"),
        ({"downsample_padding": 2}, "padding must be 0 or 1"),
    ],
)
def test_invalid_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**(SMALL | kwargs))


def test_conditioning_inputs_are_rejected_by_an_unconditional_net():
    net = UNet(**SMALL)
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([0])
    with pytest.raises(ValueError, match="without num_classes"):
        net(x, t, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="without cond_channels"):
        net(x, t, cond=torch.randn(1, 1, 8, 8))


def test_config_rebuilds_the_same_architecture():
    net = UNet(in_channels=1, n_blocks=(1, 2), num_classes=10, cond_channels=2, **SMALL)
    rebuilt = NETWORKS.build("UNet", net.config())
    assert rebuilt.config() == net.config()
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    assert net.in_channels == 1 and net.out_channels == 1 and net.attns == (False, True)
