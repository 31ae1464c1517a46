"""A small CNN classifier whose penultimate activations serve as the feature space for metrics.

Inception-v3 weights (the usual FID feature space, Heusel et al. 2017) cannot be downloaded
offline, and they describe 8x8 digits poorly anyway. Instead, a small CNN is trained once on the
benchmark's own training split (``train_classifier.py``) and shipped in ``benchmarks/assets`` as
``<name>_classifier.safetensors`` + ``<name>_classifier.json``. Features are the activations of
its penultimate layer, ``SiLU(Linear(...))``, of size ``feature_dim``, affinely normalised with
constants fixed at training time (the training features' mean is subtracted, and all dimensions
are divided by one common scale so that their average variance is 1). One common scale keeps the
feature geometry, and makes the numbers independent of the arbitrary size of the activations:
KID's polynomial kernel ``(x . y / D + 1)^3`` assumes features of order 1.

Loading never unpickles: weights come from safetensors, the architecture from JSON, and every
tensor's name and shape is checked against the architecture before ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.quality.digits import ImageSplit

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
FORMAT_VERSION = 1

# Dataset name (the serialization-boundary string) -> image side length it was trained on.
DATASET_IMAGE_SIZES = {"digits": 8, "fashion-mnist": 28}


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`SmallCNN`; stored verbatim in the asset's JSON."""

    dataset: str  # which dataset (and split) the weights were trained on
    image_size: int  # H = W of the input
    in_channels: int = 1  # C of the input
    widths: tuple[int, ...] = (32, 64, 64)  # channels per conv stage; 2x max-pool between stages
    stem_stride: int = 1  # stride of the first conv (2 quarters the cost on 28x28 inputs)
    feature_dim: int = 64  # size of the penultimate layer = the feature space
    num_classes: int = 10  # classifier outputs

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        """Build from JSON, rejecting unknown or missing fields rather than dropping them."""
        fields = set(cls.__dataclass_fields__)
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown classifier config fields: {sorted(unknown)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(int(w) for w in d["widths"])
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


def dataset_split(dataset: str) -> ImageSplit:
    """The fixed train / held-out split of ``dataset`` ("digits" or "fashion-mnist")."""
    if dataset == "digits":
        from benchmarks.quality.digits import digits_split

        return digits_split()
    if dataset == "fashion-mnist":
        from benchmarks.quality.fashion import fashion_split

        return fashion_split()
    raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASET_IMAGE_SIZES)}")


def asset_paths(name_or_stem: str | Path) -> tuple[Path, Path]:
    """``(json, safetensors)`` paths for a dataset name or an explicit path stem."""
    if isinstance(name_or_stem, str) and name_or_stem in DATASET_IMAGE_SIZES:
        stem = ASSETS_DIR / f"{name_or_stem.replace('-', '_')}_classifier"
    else:
        stem = Path(name_or_stem)
    return stem.with_suffix(".json"), stem.with_suffix(".safetensors")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_classifier(
    model: SmallCNN, name_or_stem: str | Path, metadata: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``model`` as safetensors plus a JSON file holding its config and ``metadata``.

    Returns:
        The ``(json, safetensors)`` paths written.
    """
    from safetensors.torch import save_file

    json_path, weights_path = asset_paths(name_or_stem)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format_version": str(FORMAT_VERSION)})
    record = {
        "format_version": FORMAT_VERSION,
        "config": asdict(model.config),
        "weights_file": weights_path.name,
        "weights_sha256": _sha256(weights_path),
        **metadata,
    }
    json_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return json_path, weights_path


def load_classifier(name_or_stem: str | Path = "digits") -> SmallCNN:
    """Load a shipped (or given) classifier in eval mode with gradients off.

    Args:
        name_or_stem: "digits", "fashion-mnist", or a path stem ``dir/foo`` naming
            ``dir/foo.json`` and ``dir/foo.safetensors``.

    Raises:
        FileNotFoundError: an asset file is missing.
        ValueError: the JSON's format version or checksum does not match, or a tensor is
            missing, unexpected, or of the wrong shape or dtype.
    """
    from safetensors.torch import load_file

    json_path, weights_path = asset_paths(name_or_stem)
    record = json.loads(json_path.read_text())
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{json_path}: format_version {record.get('format_version')!r}")
    expected_sha = record.get("weights_sha256")
    if expected_sha is not None and _sha256(weights_path) != expected_sha:
        raise ValueError(f"{weights_path}: checksum differs from {json_path.name}")
    model = SmallCNN(ClassifierConfig.from_dict(record["config"]))
    state = load_file(str(weights_path))
    reference = model.state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    if missing or unexpected:
        raise ValueError(f"{weights_path}: missing tensors {missing}, unexpected {unexpected}")
    for key, ref in reference.items():
        if state[key].shape != ref.shape or state[key].dtype != ref.dtype:
            raise ValueError(
                f"{weights_path}: {key} is {tuple(state[key].shape)} {state[key].dtype}, "
                f"expected {tuple(ref.shape)} {ref.dtype}"
            )
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _shipped_classifier(dataset: str) -> SmallCNN:
    return load_classifier(dataset)


def classifier_for(images: torch.Tensor) -> SmallCNN:
    """The shipped classifier matching the size of ``images`` ``[N x 1 x H x W]`` (cached)."""
    for dataset, size in DATASET_IMAGE_SIZES.items():
        if images.ndim == 4 and tuple(images.shape[1:]) == (1, size, size):
            return _shipped_classifier(dataset)
    raise ValueError(
        f"no shipped classifier for images of shape {tuple(images.shape)}; "
        f"known sizes: {DATASET_IMAGE_SIZES}"
    )


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
