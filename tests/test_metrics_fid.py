"""The FID wrapper (diffusionkit.metrics.fid) against diffusionkit's own Frechet distance.

Inception-v3 weights cannot be downloaded here, so a small, fixed, randomly initialised network
stands in for Inception: the wrapper must give torchmetrics' FID of that network's features,
which must equal our Frechet distance of the same features.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

from diffusionkit.metrics import frechet_distance, init_weights
from diffusionkit.metrics.fid import INSTALL_HINT, frechet_inception_distance

needs_torchmetrics = pytest.mark.skipif(
    importlib.util.find_spec("torchmetrics") is None,
    reason='torchmetrics is not installed (pip install "diffusionkit[fid]" or ".[test]")',
)


def stand_in() -> nn.Module:
    """A fixed random conv net: RGB [B x 3 x H x W] -> [B x 32] features."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
    )
    init_weights(net, torch.Generator().manual_seed(0))
    return net.eval()


def rgb(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 12, 12, generator=g) * 1.6 - 0.8 + shift).clamp(-1, 1)


@needs_torchmetrics
def test_fid_with_a_stand_in_network_equals_our_frechet_distance_of_its_features():
    net = stand_in()
    samples, reference = rgb(150, 1, shift=0.15), rgb(200, 2)
    fid = frechet_inception_distance(samples, reference, feature=net, batch_size=64)
    with torch.no_grad():
        ours = frechet_distance(net(samples), net(reference))
    assert isinstance(fid, float) and fid > 0
    assert fid == pytest.approx(ours, rel=1e-6)
    same = frechet_inception_distance(reference[:100], reference[100:], feature=net)
    assert same < fid  # two halves of one distribution are closer than a shifted one


@needs_torchmetrics
def test_fid_checks_its_inputs():
    net = stand_in()
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        frechet_inception_distance(rgb(4, 1) * 3, rgb(4, 2), feature=net)
    with pytest.raises(ValueError, match="one shape"):
        frechet_inception_distance(rgb(4, 1), rgb(4, 2)[:, :, :8], feature=net)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_inception_distance(rgb(1, 1), rgb(4, 2), feature=net)
    with pytest.raises(ValueError, match=r"\[B x D\] features"):
        frechet_inception_distance(rgb(4, 1), rgb(4, 2), feature=nn.Identity())


def test_fid_without_torchmetrics_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", None)
    with pytest.raises(ImportError, match=r'pip install "diffusionkit\[fid\]"'):
        frechet_inception_distance(rgb(4, 1), rgb(4, 2), feature=stand_in())


@needs_torchmetrics
@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is not None,
    reason="torch-fidelity is installed: Inception would be downloaded",
)
def test_inception_without_torch_fidelity_names_the_extra():
    with pytest.raises(ImportError, match=r"torch-fidelity.*diffusionkit\[fid\]"):
        frechet_inception_distance(rgb(4, 1), rgb(4, 2))
    assert "diffusionkit[fid]" in INSTALL_HINT


def test_inception_input_is_the_8_bit_pixels_in_rgb():
    from diffusionkit.metrics.fid import _to_inception_input

    pixels = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16)
    images = pixels / 127.5 - 1.0  # how 8-bit images become [-1, 1]
    out = _to_inception_input(images)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 16, 16)
    assert torch.equal(out[:, 0], pixels[:, 0].to(torch.uint8))
    assert torch.equal(out[:, 0], out[:, 2])
