"""A small CNN classifier whose penultimate activations are the feature space of the metrics.

Inception-v3 (the usual FID feature space, Heusel et al. 2017) needs weights that must be
downloaded, was trained on ImageNet photographs, and describes 8x8 digits or 28x28 clothing
poorly. Instead, a small CNN is trained once on a dataset's training images
(``benchmarks/quality/train_classifier.py``) and shipped with the package
(:mod:`diffusionkit.metrics.shipped`). Features are the activations of its penultimate layer,
``SiLU(Linear(...))``, of size ``feature_dim``, affinely normalised with constants fixed at
training time (the training features' mean is subtracted, and all dimensions are divided by one
common scale so that their average variance is 1). One common scale keeps the feature geometry
and makes the numbers independent of the arbitrary size of the activations: KID's polynomial
kernel ``(x . y / D + 1)^3`` assumes features of order 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from diffusionkit.limits import MAX_IMAGE_CHANNELS, MAX_IMAGE_SIZE, MAX_LEVELS, MAX_WIDTH

__all__ = [
    "ClassifierConfig",
    "SmallCNN",
    "crop_to_classifier",
    "extract_features",
    "init_weights",
]

_MAX_CLASSES = 100_000
_MAX_STRIDE = 4


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"classifier config: {name} must be an integer in [{low}, {high}], got {value!r}"
        )


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`SmallCNN`; stored verbatim in the classifier's JSON file.

    Every field is checked on construction, so a config read from a file is either valid or
    refused with a message naming the field.
    """

    dataset: str  # which dataset (and split) the weights were trained on
    image_size: int  # H = W of the input
    in_channels: int = 1  # C of the input
    widths: tuple[int, ...] = (32, 64, 64)  # channels per conv stage; 2x max-pool between stages
    stem_stride: int = 1  # stride of the first conv (2 quarters the cost on 28x28 inputs)
    feature_dim: int = 64  # size of the penultimate layer = the feature space
    num_classes: int = 10  # classifier outputs

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ValueError(f"classifier config: dataset must be a name, got {self.dataset!r}")
        _check_int("image_size", self.image_size, 1, MAX_IMAGE_SIZE)
        _check_int("in_channels", self.in_channels, 1, MAX_IMAGE_CHANNELS)
        if not isinstance(self.widths, tuple) or not 1 <= len(self.widths) <= MAX_LEVELS:
            raise ValueError(
                f"classifier config: widths must be 1 to {MAX_LEVELS} integers, got {self.widths!r}"
            )
        for width in self.widths:
            _check_int("each of widths", width, 1, MAX_WIDTH)
        _check_int("stem_stride", self.stem_stride, 1, _MAX_STRIDE)
        _check_int("feature_dim", self.feature_dim, 1, MAX_WIDTH)
        _check_int("num_classes", self.num_classes, 1, _MAX_CLASSES)

    @classmethod
    def from_dict(cls, d: Any) -> ClassifierConfig:
        """Build from JSON, rejecting unknown or missing fields rather than dropping them.

        Raises:
            ValueError: ``d`` is not an object, has unknown or missing fields, or a field is
                out of range.
        """
        if not isinstance(d, dict):
            raise ValueError(f"classifier config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown classifier config fields: {sorted(unknown)}")
        missing = {"dataset", "image_size"} - set(d)
        if missing:
            raise ValueError(f"classifier config lacks the fields {sorted(missing)}")
        d = dict(d)
        if "widths" in d:
            if not isinstance(d["widths"], list | tuple):
                raise ValueError(f"classifier config: widths must be a list, got {d['widths']!r}")
            d["widths"] = tuple(d["widths"])
        return cls(**d)


class SmallCNN(nn.Module):
    """Conv stages -> 2x2 average pool -> penultimate features -> class logits.

    Stage ``i`` is ``[MaxPool2d(2) if i > 0] -> Conv3x3 -> SiLU`` (the first conv has stride
    ``stem_stride``); SiLU rather than ReLU so that no feature is identically zero (dead units
    make feature covariances singular).

    Digits, widths (32, 64, 64): 8x8 -> 4x4 -> 2x2, 73k parameters.
    Fashion-MNIST, stem stride 2: 28x28 -> 14x14 -> 7x7 -> 3x3 -> adaptive-average to 2x2.
    """

    feature_shift: torch.Tensor  # [feature_dim] buffer
    feature_scale: torch.Tensor  # [] buffer

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = config.in_channels
        for i, width in enumerate(config.widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            stride = config.stem_stride if i == 0 else 1
            layers += [nn.Conv2d(c_in, width, kernel_size=3, stride=stride, padding=1), nn.SiLU()]
            c_in = width
        self.trunk = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(4 * c_in, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        # Feature normalisation constants, set once by `fit_feature_normalization`.
        self.register_buffer("feature_shift", torch.zeros(config.feature_dim))
        self.register_buffer("feature_scale", torch.ones(()))

    def _check_input(self, x: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(
                f"expected images [N x {c} x {s} x {s}] in [-1, 1], got {tuple(x.shape)}"
            )

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """Raw penultimate activations ``[N x feature_dim]`` of images ``[N x C x H x W]``."""
        self._check_input(x)
        h = self.pool(self.trunk(x)).flatten(1)  # (N, 4 * widths[-1])
        return nn.functional.silu(self.fc(h))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised penultimate activations: the feature space of the metrics.

        Args:
            x: ``[N x C x H x W]`` images in [-1, 1].

        Returns:
            ``[N x feature_dim]``, ``(penultimate(x) - feature_shift) / feature_scale``.
        """
        return (self.penultimate(x) - self.feature_shift) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N x num_classes]`` for images ``[N x C x H x W]`` in [-1, 1]."""
        return self.head(self.penultimate(x))

    @torch.no_grad()
    def fit_feature_normalization(self, images: torch.Tensor, batch_size: int = 1000) -> None:
        """Set the normalisation from training images ``[N x C x H x W]``.

        Afterwards the features of ``images`` have mean 0 and average per-dimension variance 1.
        """
        raw = torch.cat(
            [
                self.penultimate(images[i : i + batch_size])
                for i in range(0, len(images), batch_size)
            ]
        ).double()
        self.feature_shift.copy_(raw.mean(0))
        self.feature_scale.copy_(raw.var(0).mean().sqrt())


def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every conv / linear layer from ``generator`` (PyTorch's default scheme).

    PyTorch initialises modules from the global RNG; drawing from an explicit generator keeps
    training reproducible without touching global state.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def extract_features(model: SmallCNN, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate features of ``images``, computed in batches without gradients.

    Args:
        model: a :class:`SmallCNN`.
        images: ``[N x C x H x W]`` in [-1, 1] (any float dtype; cast to float32).
        batch_size: images per forward pass.

    Returns:
        ``[N x feature_dim]`` float64 on the CPU.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = [
                model.features(images[i : i + batch_size].float()).double().cpu()
                for i in range(0, images.shape[0], batch_size)
            ]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.config.feature_dim, dtype=torch.float64)


def crop_to_classifier(images: torch.Tensor, config: ClassifierConfig) -> torch.Tensor:
    """Bring images of a model's size and channels to what a classifier takes.

    The built-in datasets reach larger sizes by centred padding (digits are 16x16 by default:
    the 8x8 digit on a background canvas) and reach 3 channels by repeating the grey one, so
    the centre crop and the greyscale conversion below undo both exactly for real images;
    generated images are treated the same way (colour images are averaged over channels).

    Args:
        images: ``[N x C x H x W]`` in [-1, 1] with ``H, W >= config.image_size`` and ``C`` equal
            to ``config.in_channels``, or 3 for a one-channel classifier.
        config: the classifier's architecture.

    Returns:
        ``[N x config.in_channels x S x S]``, ``S = config.image_size``: the central crop (the
        same offset as the built-ins' padding, ``(H - S) // 2``), channels averaged if needed.

    Raises:
        ValueError: the images are smaller than the classifier's input, or their channels
            cannot be converted.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [N x C x H x W], got shape {tuple(images.shape)}")
    c, h, w = images.shape[1:]
    side = config.image_size
    if h < side or w < side:
        raise ValueError(
            f"images are {h}x{w}, smaller than the {side}x{side} the {config.dataset!r} "
            "classifier takes"
        )
    if c != config.in_channels:
        if config.in_channels != 1 or c != 3:
            raise ValueError(
                f"images have {c} channels; the {config.dataset!r} classifier takes "
                f"{config.in_channels}"
            )
        # (N, 1, H, W): repeated grey channels give back the grey exactly; colour is averaged
        same = bool((images == images[:, :1]).all())
        images = images[:, :1] if same else images.mean(dim=1, keepdim=True)
    top, left = (h - side) // 2, (w - side) // 2
    return images[..., top : top + side, left : left + side]
