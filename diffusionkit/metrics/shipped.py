"""The feature classifiers shipped with diffusionkit: where their files are, loading and saving.

A classifier is two files with one stem: ``<stem>.safetensors`` (the weights) and
``<stem>.json`` (format version, :class:`~diffusionkit.metrics.classifier.ClassifierConfig`,
the weights' sha256, and how it was trained; the pair may be copied under another stem). The package ships one for each
built-in dataset in ``diffusionkit/metrics/weights/``, written by
``python -m benchmarks.quality.train_classifier``.

Loading never unpickles: weights come from safetensors, the architecture from JSON, and the
JSON, the checksum and every tensor's name, shape, dtype and finiteness are checked before
``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from diffusionkit.metrics.classifier import ClassifierConfig, SmallCNN

__all__ = [
    "FORMAT_VERSION",
    "SHIPPED_CLASSIFIERS",
    "WEIGHTS_DIR",
    "classifier_files",
    "classifier_for",
    "load_classifier",
    "save_classifier",
    "shipped_classifier",
]

#: folder of the shipped classifiers' files (package data)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: version of the JSON layout; a file of another version is refused
FORMAT_VERSION = 1
#: built-in dataset name -> side of the (square, one-channel) images its classifier takes
SHIPPED_CLASSIFIERS: dict[str, int] = {"digits": 8, "fashion-mnist": 28}

_RETRAIN = "retrain it with: python -m benchmarks.quality.train_classifier"


def classifier_files(name_or_stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(json, safetensors)`` paths of a shipped classifier's name or of a path stem.

    Args:
        name_or_stem: ``"digits"``, ``"fashion-mnist"``, or a stem ``dir/foo`` naming
            ``dir/foo.json`` and ``dir/foo.safetensors``.
    """
    if isinstance(name_or_stem, str) and name_or_stem in SHIPPED_CLASSIFIERS:
        stem = WEIGHTS_DIR / f"{name_or_stem.replace('-', '_')}_classifier"
    else:
        stem = Path(name_or_stem)
    return stem.with_suffix(".json"), stem.with_suffix(".safetensors")


def save_classifier(
    model: SmallCNN, name_or_stem: str | os.PathLike[str], metadata: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``model`` as safetensors plus a JSON file holding its config and ``metadata``.

    Both files are written atomically, the weights first: the JSON records their sha256, so a
    crash between the two leaves a pair that :func:`load_classifier` refuses, never a silent
    mismatch.

    Returns:
        The ``(json, safetensors)`` paths written.
    """
    from safetensors.torch import save_file

    from diffusionkit.hub.integrity import sha256_file
    from diffusionkit.utils.atomic import atomic_save, atomic_write_text

    json_path, weights_path = classifier_files(name_or_stem)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save(
        weights_path,
        lambda tmp: save_file(state, str(tmp), metadata={"format_version": str(FORMAT_VERSION)}),
    )
    record = {
        "format_version": FORMAT_VERSION,
        "config": asdict(model.config),
        "weights_file": weights_path.name,
        "weights_sha256": sha256_file(weights_path),
        **metadata,
    }
    atomic_write_text(json_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return json_path, weights_path


def _read_record(json_path: Path, weights_path: Path) -> dict[str, Any]:
    """The classifier's JSON record, checked against the format and its weights file."""
    from diffusionkit.hub.integrity import sha256_file
    from diffusionkit.utils.files import read_regular

    if not json_path.is_file():
        raise FileNotFoundError(
            f"classifier file {json_path} not found; pass 'digits', 'fashion-mnist' or the "
            "stem of a classifier's .json/.safetensors pair"
        )
    try:
        record = json.loads(read_regular(json_path, "classifier config"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{json_path}: not valid JSON ({error}); {_RETRAIN}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{json_path}: expected a JSON object, got {type(record).__name__}")
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{json_path}: format_version {record.get('format_version')!r}, this diffusionkit "
            f"reads {FORMAT_VERSION}; {_RETRAIN}"
        )
    if not weights_path.is_file():
        raise FileNotFoundError(f"classifier weights {weights_path} not found; {_RETRAIN}")
    expected = record.get("weights_sha256")
    if not isinstance(expected, str) or sha256_file(weights_path) != expected:
        raise ValueError(
            f"{weights_path}: checksum differs from the weights_sha256 of {json_path.name}; the "
            f"file was changed or truncated: reinstall diffusionkit, or {_RETRAIN}"
        )
    return record


def load_classifier(name_or_stem: str | os.PathLike[str] = "digits") -> SmallCNN:
    """Load a shipped (or given) classifier in eval mode with gradients off.

    Args:
        name_or_stem: ``"digits"``, ``"fashion-mnist"``, or a path stem ``dir/foo`` naming
            ``dir/foo.json`` and ``dir/foo.safetensors``.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the JSON is malformed or of another format version; the weights' checksum
            does not match the one the JSON records; a tensor is missing, unexpected, of the wrong
            shape or dtype, or not finite.
    """
    from diffusionkit.hub.weights import check_tensors, read_safetensors

    json_path, weights_path = classifier_files(name_or_stem)
    record = _read_record(json_path, weights_path)
    try:
        config = ClassifierConfig.from_dict(record.get("config"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{json_path}: {error}") from None
    model = SmallCNN(config)
    state = read_safetensors(weights_path, str(weights_path))
    reference = model.state_dict()
    check_tensors(state, reference, str(weights_path), "SmallCNN of its config")
    for key, ref in reference.items():
        if state[key].dtype != ref.dtype:
            raise ValueError(f"{weights_path}: {key} is {state[key].dtype}, expected {ref.dtype}")
        if not torch.isfinite(state[key]).all():
            raise ValueError(f"{weights_path}: {key} holds NaN or inf; {_RETRAIN}")
    if not float(state["feature_scale"]) > 0:
        raise ValueError(f"{weights_path}: feature_scale must be positive; {_RETRAIN}")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _cached(dataset: str) -> SmallCNN:
    return load_classifier(dataset)


def shipped_classifier(dataset: str) -> SmallCNN:
    """The shipped classifier of a built-in dataset, loaded once per process.

    The same module is returned on every call: do not train or modify it.

    Args:
        dataset: ``"digits"`` or ``"fashion-mnist"``.

    Raises:
        ValueError: no classifier is shipped for ``dataset``.
    """
    if dataset not in SHIPPED_CLASSIFIERS:
        raise ValueError(
            f"no classifier is shipped for {dataset!r}; shipped: {', '.join(SHIPPED_CLASSIFIERS)}"
        )
    return _cached(dataset)


def classifier_for(images: torch.Tensor) -> SmallCNN:
    """The shipped classifier matching the size of ``images`` ``[N x 1 x H x W]`` (cached).

    Raises:
        ValueError: no shipped classifier takes images of this shape.
    """
    for dataset, size in SHIPPED_CLASSIFIERS.items():
        if images.ndim == 4 and tuple(images.shape[1:]) == (1, size, size):
            return shipped_classifier(dataset)
    raise ValueError(
        f"no shipped classifier for images of shape {tuple(images.shape)}; "
        f"known sizes: {SHIPPED_CLASSIFIERS}"
    )
