"""FID (Heusel et al. 2017) for RGB data, through torchmetrics: the optional ``fid`` extra.

The Frechet distance itself is :func:`~diffusionkit.metrics.frechet.frechet_distance`; what FID
adds is a fixed feature space, the 2048 pool features of the Inception-v3 network that the
original TensorFlow FID code used, so that numbers are comparable with published ones. Here
that network comes from torchmetrics' ``FrechetInceptionDistance`` (Lightning AI), which takes
its Inception-v3 port from torch-fidelity. Install both with::

    pip install "diffusionkit[fid]"

Two things to know before using the default feature extractor:

* The Inception weights are **downloaded on first use** (by torch-fidelity, from its GitHub
  releases, into the torch hub cache): the first call needs a network connection.
* Those weights are a pickled ``.pth`` file that torch-fidelity loads itself; diffusionkit's own
  files are safetensors only, but this third-party file is not.

Any ``nn.Module`` that maps images to ``[B x D]`` features can stand in for Inception
(``feature=``), which is how the tests check this wrapper offline, and how to compute a
Frechet distance in your own feature space with the same code path.

This module imports torchmetrics only when called, so ``import diffusionkit.metrics`` works
without the extra.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch
from torch import nn

from diffusionkit.metrics.score import check_images

__all__ = [
    "INCEPTION_FEATURES",
    "INSTALL_HINT",
    "frechet_inception_distance",
    "require_inception",
]

#: the command that installs this module's optional dependencies
INSTALL_HINT = 'pip install "diffusionkit[fid]"'
#: size of Inception-v3's pool3 features, the FID feature space
INCEPTION_FEATURES = 2048


def _import(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"FID needs {package}, which is not installed; install it with {INSTALL_HINT}"
        ) from error


class _Float64Features(nn.Module):
    """Runs a feature network and returns its features in float64.

    torchmetrics accumulates the statistics in float64 but casts the final FID to the
    features' dtype; float64 features keep the result in float64 too. ``num_features`` spares
    torchmetrics its probe with a random 299x299 image.
    """

    def __init__(self, net: nn.Module, num_features: int) -> None:
        super().__init__()
        self.net = net
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).double()


def _to_inception_input(images: torch.Tensor) -> torch.Tensor:
    """``[B x C x H x W]`` in [-1, 1] -> uint8 RGB, the 8-bit pixels Inception's FID expects.

    Rounds rather than truncates, so images that were 8-bit pixels ``p / 127.5 - 1`` give back
    exactly ``p``. One channel is repeated to three.
    """
    pixels = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def require_inception() -> None:
    """Check that FID with Inception-v3 features can run: torchmetrics and torch-fidelity.

    Raises:
        ImportError: one is missing; the message names ``pip install "diffusionkit[fid]"``.
    """
    _import("torchmetrics.image.fid", "torchmetrics")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ImportError(
            f"FID with Inception-v3 features needs torch-fidelity, which is not installed; "
            f"install it with {INSTALL_HINT} (or pass feature= a network of your own)"
        )


def _metric(feature: nn.Module | None, example: torch.Tensor) -> Any:
    """torchmetrics' ``FrechetInceptionDistance`` with ``feature`` (or Inception) in float64."""
    fid = _import("torchmetrics.image.fid", "torchmetrics")
    if feature is None:
        require_inception()
        metric = fid.FrechetInceptionDistance(feature=INCEPTION_FEATURES, normalize=False)
        metric.inception = _Float64Features(metric.inception, INCEPTION_FEATURES)
        return metric
    with torch.no_grad():
        probe = feature(example[:1])
    if probe.ndim != 2 or probe.shape[0] != 1:
        raise ValueError(
            f"feature must map [B x C x H x W] images to [B x D] features; it returned "
            f"{tuple(probe.shape)} for one image"
        )
    wrapped = _Float64Features(feature, int(probe.shape[1]))
    return fid.FrechetInceptionDistance(feature=wrapped, normalize=True)


def frechet_inception_distance(
    samples: torch.Tensor,
    reference: torch.Tensor,
    *,
    feature: nn.Module | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> float:
    """FID of generated images against real ones, computed by torchmetrics.

    ``||mu_s - mu_r||^2 + Tr(S_s + S_r - 2 (S_s S_r)^{1/2})`` of Gaussians fitted to the
    features of both sets (Heusel et al. 2017, eq. 6). Like every Frechet distance it is biased
    upwards at small sample sizes (Binkowski et al. 2018, app. D); FID is usually reported for
    10,000 or 50,000 samples, and only values at equal sizes compare.

    Args:
        samples: ``[M x C x H x W]`` generated images in [-1, 1], ``C`` 1 or 3 for Inception.
        reference: ``[N x C x H x W]`` real images in [-1, 1].
        feature: ``None`` for Inception-v3 (images are quantised to 8-bit RGB and resized to
            299x299 by torchmetrics; weights downloaded on first use), or a network mapping
            ``[B x C x H x W]`` float32 images in [-1, 1] to ``[B x D]`` features.
        batch_size: images per forward pass.
        device: where the feature network runs (``feature`` is moved there).

    Returns:
        The FID (float64 arithmetic).

    Raises:
        ImportError: torchmetrics (or, for Inception, torch-fidelity) is not installed; the
            message names ``pip install "diffusionkit[fid]"``.
        ValueError: images outside [-1, 1], fewer than 2 in a set, different image shapes, or
            a feature network whose output is not ``[B x D]``.
    """
    check_images(samples, "samples")
    check_images(reference, "reference")
    if samples.ndim != 4 or samples.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"samples and reference must be [N x C x H x W] of one shape, got "
            f"{tuple(samples.shape)} and {tuple(reference.shape)}"
        )
    if len(samples) < 2 or len(reference) < 2:
        raise ValueError("FID needs at least 2 images in each set (a covariance)")
    if feature is None and samples.shape[1] not in (1, 3):
        raise ValueError(f"Inception takes RGB (or grey) images, got {samples.shape[1]} channels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if feature is not None:
        feature = feature.to(device)
    metric = _metric(feature, samples.float().to(device)).to(device)
    prepare = _to_inception_input if feature is None else (lambda x: x.float())
    with torch.no_grad():
        for images, real in ((reference, True), (samples, False)):
            for i in range(0, len(images), batch_size):
                metric.update(prepare(images[i : i + batch_size].to(device)), real=real)
        return float(metric.compute())
