"""What ``save_pretrained``, ``from_pretrained``, ``push_to_hub`` and the diffusers methods do.

:class:`~diffusionkit.persistence.PretrainedMixin` is the public face; this module does the work,
choosing between the diffusionkit format (:mod:`~diffusionkit.hub.checkpoint`) and diffusers'
layouts (:mod:`~diffusionkit.hub.diffusers_pipeline`) by the files a folder or repo holds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitInfo
from torch import Tensor, nn

from diffusionkit.diffusion import DenoiseDiffusion
from diffusionkit.hub import diffusers_pipeline as dp
from diffusionkit.hub.checkpoint import (
    CONFIG_NAME,
    EMA_WEIGHTS_NAME,
    SAMPLE_GRID_NAME,
    Kind,
    build_model,
    ema_tensors,
    is_diffusionkit_config,
    model_kind,
    network_of,
    parse_config,
    read_json,
    write_checkpoint,
)
from diffusionkit.hub.errors import CheckpointError, CheckpointNotFoundError
from diffusionkit.hub.integrity import sha256_file
from diffusionkit.hub.remote import Source, open_source, upload_folder_to_hub
from diffusionkit.hub.weights import fully_in_state_dict, load_into, read_safetensors

__all__ = ["load_pretrained", "push_to_hub", "save_diffusers", "save_pretrained"]

EmaWeights = nn.Module | Mapping[str, Tensor] | None
_PROBE = [CONFIG_NAME, dp.MODEL_INDEX, dp.UNET_CONFIG, dp.SCHEDULER_CONFIG]


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    ema: EmaWeights = None,
    sample_grid: str | os.PathLike[str] | None = None,
) -> Path:
    """See :meth:`PretrainedMixin.save_pretrained`."""
    return write_checkpoint(model, Path(directory), ema=ema, sample_grid=_path(sample_grid))


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    private: bool | None,
    token: str | None,
    commit_message: str,
    branch: str | None,
    ema: EmaWeights,
    sample_grid: str | os.PathLike[str] | None,
) -> CommitInfo:
    """See :meth:`PretrainedMixin.push_to_hub`."""
    with tempfile.TemporaryDirectory(prefix="diffusionkit-push-") as tmp:
        folder = Path(tmp) / "checkpoint"
        write_checkpoint(
            model, folder, ema=ema, sample_grid=_path(sample_grid), card_source=repo_id
        )
        # files of an earlier push that this checkpoint does not have (config.json no longer lists them)
        stale = [
            name for name in (EMA_WEIGHTS_NAME, SAMPLE_GRID_NAME) if not (folder / name).exists()
        ]
        return upload_folder_to_hub(
            folder,
            repo_id,
            private=private,
            token=token,
            branch=branch,
            commit_message=commit_message,
            delete_patterns=stale,
        )


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


def load_pretrained(
    cls: type,
    path_or_repo_id: str | os.PathLike[str],
    *,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
    force_download: bool,
    map_location: str | torch.device,
    use_ema: bool,
    allow_pickle: bool,
    diffusers_only: bool = False,
) -> nn.Module:
    """See :meth:`PretrainedMixin.from_pretrained` (and ``from_diffusers``: ``diffusers_only``)."""
    source = open_source(
        path_or_repo_id,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        force_download=force_download,
    )
    root = source.fetch(_PROBE)
    config_path = source.path(root, CONFIG_NAME)
    config = read_json(config_path, source.label(CONFIG_NAME)) if config_path else None
    model: nn.Module
    if is_diffusionkit_config(config) and diffusers_only:
        raise CheckpointError(
            f"{source.name} is a diffusionkit checkpoint, not a diffusers one: use from_pretrained"
        )
    if is_diffusionkit_config(config):
        model = _load_checkpoint(cls, source, config, use_ema=use_ema)
    elif source.path(root, dp.MODEL_INDEX) is not None or (
        isinstance(config, dict) and config.get("_class_name") == "UNet2DModel"
    ):
        model = _load_diffusers(cls, source, root, allow_pickle=allow_pickle)
    else:
        files = source.list_files()
        listing = f" (it holds: {', '.join(files[:10])})" if files else ""
        raise CheckpointNotFoundError(
            f"{source.name} is neither a diffusionkit checkpoint (a config.json with "
            f"'diffusionkit_format') nor a diffusers DDPM pipeline (model_index.json){listing}"
        )
    model.eval()
    return model.to(map_location)


def _load_checkpoint(cls: type, source: Source, config: Any, *, use_ema: bool) -> nn.Module:
    config_label = source.label(CONFIG_NAME)
    parsed = parse_config(config, config_label)
    entry = parsed.weights_to_load(use_ema)
    root = source.fetch([entry.file])
    label = source.label(entry.file)
    path = source.path(root, entry.file)
    if path is None:
        raise CheckpointNotFoundError(f"{label}: listed in config.json but not found")
    digest = source.digests.get(entry.file, {}).get("sha256") or sha256_file(path)
    if digest != entry.sha256:
        raise CheckpointError(
            f"{label}: its content does not match the sha256 that config.json records "
            f"({entry.sha256[:12]}...); {source.corrupt_hint()}"
        )
    tensors = read_safetensors(path, label)
    model = build_model(cls, parsed, config_label, meta=True)
    if not fully_in_state_dict(network_of(model)):  # tensors no file sets: initialize them
        model = build_model(cls, parsed, config_label)
    load_into(network_of(model), tensors, label)
    return model


def _load_diffusers(cls: type, source: Source, root: Path, *, allow_pickle: bool) -> nn.Module:
    pipeline = source.path(root, dp.MODEL_INDEX) is not None
    if model_kind(cls) is Kind.DIFFUSION:
        if not pipeline:
            raise CheckpointError(
                f"{source.name} holds a diffusers UNet2DModel alone, without a scheduler: load "
                "it with UNet.from_pretrained and build DenoiseDiffusion(net, schedule) around it"
            )
        return dp.load_pipeline(cls, source, root, allow_pickle=allow_pickle)
    net = dp.load_unet(source, root, "unet" if pipeline else "", allow_pickle=allow_pickle)
    if not isinstance(net, cls):
        raise CheckpointError(
            f"{source.name} holds a UNet2DModel, which loads as a UNet, not a {cls.__name__}"
        )
    return net


def save_diffusers(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    sample_size: int | tuple[int, int],
    ema: EmaWeights = None,
) -> Path:
    """See :meth:`PretrainedMixin.save_diffusers`."""
    net = network_of(model)
    tensors = ema_tensors(ema, net) if ema is not None else dict(net.state_dict())
    if model_kind(type(model)) is Kind.DIFFUSION:
        assert isinstance(model, DenoiseDiffusion)
        return dp.save_pipeline(model, Path(directory), sample_size=sample_size, tensors=tensors)
    return dp.save_unet(net, Path(directory), sample_size=sample_size, tensors=tensors)
