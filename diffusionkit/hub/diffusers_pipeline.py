"""Read and write diffusers' folder layouts: a ``DDPMPipeline`` and a lone ``UNet2DModel``.

A pipeline folder (e.g. ``google/ddpm-cifar10-32``)::

    model_index.json                              # {"unet": ["diffusers", "UNet2DModel"], ...}
    unet/config.json                              # UNet2DModel config
    unet/diffusion_pytorch_model.safetensors      # weights (older repos: .bin, a pickle)
    scheduler/scheduler_config.json               # DDPMScheduler config

A ``UNet2DModel`` folder is what ``unet/`` holds. Pickled ``.bin`` weights are read only with
``allow_pickle=True``, and then with ``torch.load(weights_only=True)``.

The UNet's channels must agree with the scheduler: ``out_channels = in_channels``, or
``out_channels = 2 * in_channels`` with ``variance_type="learned_range"`` (a network that learns
its variance, which loads as ``DenoiseDiffusion(learned_variance=True)``). diffusers itself
splits the output only for a learned variance type, so any other pairing breaks its sampling
loop; both are checked before any weights are read, and on export.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffusionkit.diffusion import DenoiseDiffusion
from diffusionkit.hub.atomic import staged_directory
from diffusionkit.hub.checkpoint import read_json
from diffusionkit.hub.diffusers_scheduler import (
    components_from_scheduler,
    diffusers_scheduler_config,
)
from diffusionkit.hub.diffusers_unet import (
    diffusers_unet_config,
    from_diffusers_tensors,
    to_diffusers_tensors,
    unet_config_from_diffusers,
)
from diffusionkit.hub.errors import CheckpointError, CheckpointNotFoundError
from diffusionkit.hub.remote import Source
from diffusionkit.hub.weights import load_into, read_pickled, read_safetensors, save_safetensors
from diffusionkit.networks.unet import UNet

__all__ = [
    "MODEL_INDEX",
    "SCHEDULER_CONFIG",
    "UNET_CONFIG",
    "load_pipeline",
    "load_unet",
    "save_pipeline",
    "save_unet",
]

MODEL_INDEX = "model_index.json"
UNET_CONFIG = "unet/config.json"
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
_CONFIG = "config.json"
_WEIGHTS = "diffusion_pytorch_model.safetensors"
_PICKLED = "diffusion_pytorch_model.bin"
_DIFFUSERS_VERSION = "0.30.0"


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _read_unet_weights(
    source: Source, folder: str, allow_pickle: bool
) -> tuple[dict[str, Tensor], str]:
    """The tensors of ``folder``'s UNet weights (safetensors, else an opted-in pickle) and label."""
    safe, pickled = _join(folder, _WEIGHTS), _join(folder, _PICKLED)
    root = source.fetch([safe])
    path = source.path(root, safe)
    if path is not None:
        return read_safetensors(path, source.label(safe)), source.label(safe)
    files = source.list_files()
    has_pickle = files is not None and pickled in files
    if not allow_pickle:
        if has_pickle:
            raise CheckpointError(
                f"{source.label(pickled)} is a pickle, and there is no {_WEIGHTS}: diffusionkit "
                "never unpickles by default, because a pickle can run code. If you trust the "
                "source, pass allow_pickle=True (it loads with torch.load(weights_only=True)); "
                "better, convert the weights to safetensors"
            )
        raise CheckpointNotFoundError(f"{source.label(safe)}: file not found")
    root = source.fetch([pickled])
    path = source.path(root, pickled)
    if path is None:
        raise CheckpointNotFoundError(f"{source.label(safe)}: file not found (nor {_PICKLED})")
    return read_pickled(path, source.label(pickled)), source.label(pickled)


def _unet_config(source: Source, root: Path, folder: str) -> tuple[dict[str, Any], str]:
    """The :class:`~diffusionkit.UNet` arguments of ``folder``'s ``config.json``, and its label."""
    name = _join(folder, _CONFIG)
    path = source.path(root, name)
    if path is None:
        raise CheckpointNotFoundError(f"{source.label(name)}: file not found")
    label = source.label(name)
    return unet_config_from_diffusers(read_json(path, label), label), label


def load_unet(source: Source, root: Path, folder: str, *, allow_pickle: bool) -> UNet:
    """Build a :class:`~diffusionkit.UNet` from a ``UNet2DModel`` folder (``folder`` in ``root``)."""
    config, label = _unet_config(source, root, folder)
    return _build_unet(source, folder, config, label, allow_pickle=allow_pickle)


def _build_unet(
    source: Source, folder: str, config: dict[str, Any], label: str, *, allow_pickle: bool
) -> UNet:
    """The UNet of ``config`` (read from ``label``) with ``folder``'s weights."""
    try:
        with torch.device("meta"):  # no memory, no initialization: the file sets every tensor
            net = UNet(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{label}: {err}") from None
    tensors, weights_label = _read_unet_weights(source, folder, allow_pickle)
    load_into(net, from_diffusers_tensors(tensors, net.state_dict(), weights_label), weights_label)
    return net


def _check_model_index(index: Any, label: str) -> None:
    if not isinstance(index, dict):
        raise CheckpointError(f"{label}: expected a JSON object")
    components = {k: v for k, v in index.items() if not k.startswith("_")}
    expected = {"unet": "UNet2DModel", "scheduler": "DDPMScheduler"}
    for key, cls in expected.items():
        entry = components.get(key)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] == cls):
            raise CheckpointError(
                f"{label}: expected a DDPM pipeline whose {key} is a {cls}, got {key}={entry!r}"
            )
    extra = sorted(
        k for k, v in components.items() if k not in expected and v not in (None, [None, None])
    )
    if extra:
        raise CheckpointError(
            f"{label}: the pipeline has components diffusionkit cannot load: {', '.join(extra)} "
            f"({index.get('_class_name', 'unknown pipeline')}; diffusionkit loads DDPM pipelines)"
        )


def load_pipeline(
    cls: type[DenoiseDiffusion], source: Source, root: Path, *, allow_pickle: bool
) -> DenoiseDiffusion:
    """Build a ``cls`` (a DenoiseDiffusion) from a diffusers DDPM pipeline folder or repo."""
    index_path = source.path(root, MODEL_INDEX)
    assert index_path is not None
    _check_model_index(read_json(index_path, source.label(MODEL_INDEX)), source.label(MODEL_INDEX))
    scheduler_path = source.path(root, SCHEDULER_CONFIG)
    if scheduler_path is None:
        raise CheckpointNotFoundError(f"{source.label(SCHEDULER_CONFIG)}: file not found")
    label = source.label(SCHEDULER_CONFIG)
    parts = components_from_scheduler(read_json(scheduler_path, label), label)
    config, unet_label = _unet_config(source, root, "unet")
    _check_channels(config, parts.learned_variance, label, unet_label)
    net = _build_unet(source, "unet", config, unet_label, allow_pickle=allow_pickle)
    return cls(
        net,
        parts.schedule,
        parts.sampler,
        parts.prediction,
        x0_processing=parts.x0_processing,
        learned_variance=parts.learned_variance,
    )


def _check_channels(
    unet: Mapping[str, Any], learned_variance: bool, scheduler_label: str, unet_label: str
) -> None:
    """Raise ``CheckpointError`` unless the UNet's (``unet``, its arguments read from
    ``unet_label``) output channels suit the scheduler: ``2 * in_channels`` for
    ``variance_type="learned_range"``, else ``in_channels``."""
    in_channels, out_channels = unet["in_channels"], unet["out_channels"]
    channels = f"{unet_label} has in_channels={in_channels}, out_channels={out_channels}"
    if learned_variance and out_channels != 2 * in_channels:
        raise CheckpointError(
            f"{scheduler_label}: variance_type='learned_range' needs a UNet2DModel with "
            f"out_channels = 2 * in_channels (the prediction, then the variance value), but "
            f"{channels}. Fix the scheduler's variance_type or the UNet"
        )
    if not learned_variance and out_channels != in_channels:
        hint = (
            ": a UNet with twice its input channels learns its variance, for "
            "variance_type='learned_range'"
            if out_channels == 2 * in_channels
            else ""
        )
        raise CheckpointError(
            f"{scheduler_label}: this variance_type needs a UNet2DModel with out_channels = "
            f"in_channels, but {channels}{hint}"
        )


# ----------------------------------------------------------------------------- export


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_unet(
    stage: Path, net: UNet, sample_size: int | tuple[int, int], tensors: Mapping[str, Tensor]
) -> None:
    config = diffusers_unet_config(net, sample_size)
    stage.mkdir(parents=True, exist_ok=True)
    save_safetensors(to_diffusers_tensors(tensors), stage / _WEIGHTS)
    _write_json(stage / _CONFIG, config)


def _unet(net: nn.Module) -> UNet:
    if not isinstance(net, UNet) or type(net) is not UNet:
        raise ValueError(f"only diffusionkit's UNet exports to diffusers, got {type(net).__name__}")
    return net


def _refuse_foreign(directory: Path, file: str, expected_class: str) -> None:
    """Raise ``FileExistsError`` if ``directory/file`` exists and is not diffusers'
    ``expected_class`` config: an export never overwrites another program's files."""
    path = directory / file
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("_class_name") != expected_class:
        raise FileExistsError(
            f"{path} exists and is not a diffusers {expected_class} config: refusing to "
            "overwrite it. Export into another folder, or move that file away first."
        )


def save_unet(
    net: nn.Module,
    directory: Path,
    *,
    sample_size: int | tuple[int, int],
    tensors: Mapping[str, Tensor],
) -> Path:
    """Write a ``UNet2DModel`` folder (``config.json`` + safetensors) that diffusers loads."""
    unet = _unet(net)
    diffusers_unet_config(unet, sample_size)  # fail before touching the disk
    _refuse_foreign(directory, _CONFIG, "UNet2DModel")
    with staged_directory(directory, commit_file=_CONFIG) as stage:
        _write_unet(stage, unet, sample_size, tensors)
    return directory


def save_pipeline(
    model: DenoiseDiffusion,
    directory: Path,
    *,
    sample_size: int | tuple[int, int],
    tensors: Mapping[str, Tensor],
) -> Path:
    """Write a ``DDPMPipeline`` folder that ``DDPMPipeline.from_pretrained`` loads."""
    unet = _unet(model.net)
    config = diffusers_unet_config(unet, sample_size)  # fail before touching the disk
    channels_in, channels_out = config["in_channels"], config["out_channels"]
    wanted = 2 * channels_in if model.learned_variance else channels_in
    if channels_out != wanted:
        what = "with" if model.learned_variance else "without"
        raise ValueError(
            f"cannot export to diffusers: a model {what} learned_variance needs a UNet with "
            f"out_channels = {wanted}, got in_channels={channels_in}, "
            f"out_channels={channels_out} (DDPMPipeline could not sample with it)"
        )
    _refuse_foreign(directory, MODEL_INDEX, "DDPMPipeline")
    _refuse_foreign(directory, UNET_CONFIG, "UNet2DModel")
    _refuse_foreign(directory, SCHEDULER_CONFIG, "DDPMScheduler")
    if (directory / _CONFIG).exists():
        raise FileExistsError(
            f"{directory / _CONFIG} exists: {directory} holds another model (a diffusionkit "
            "checkpoint or a UNet2DModel), which a pipeline export would mix with; export into "
            "another folder"
        )
    scheduler = diffusers_scheduler_config(
        model.schedule, model.sampler, model.prediction, model.x0_processing, model.learned_variance
    )
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": _DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    with staged_directory(directory, commit_file=MODEL_INDEX) as stage:
        _write_unet(stage / "unet", unet, sample_size, tensors)
        _write_json(stage / SCHEDULER_CONFIG, scheduler)
        _write_json(stage / MODEL_INDEX, index)
    return directory
