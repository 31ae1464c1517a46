"""Training checkpoints: folders of safetensors files plus one JSON file, written atomically.

Layout of one checkpoint, ``<root>/step-00001000/``::

    model.safetensors       the trained network's weights
    ema.safetensors         the EMA weights
    optimizer.safetensors   the optimizer's per-parameter tensors, flattened (see below)
    rng.safetensors         random-number-generator states (uint8 tensors)
    state.json              everything else: step, data order, learning-rate schedule, loss
                            scale, EMA count, optimizer hyperparameters, configs

No pickle anywhere: tensors go to safetensors, everything else to JSON. The folder is first
written under a hidden temporary name in the same parent, flushed to disk, and then renamed
into place with ``os.replace``; a crash mid-save leaves only the hidden folder (ignored and
later removed), never a damaged checkpoint, and older checkpoints stay untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffusionkit.utils.atomic import fsync_dir, publishable

__all__ = [
    "CHECKPOINTS_DIRNAME",
    "STATE_FILE",
    "Checkpoint",
    "find_checkpoint",
    "flatten_optimizer_state",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "unflatten_optimizer_state",
]

#: name of the JSON file of a checkpoint; a folder holding it is a complete checkpoint
STATE_FILE = "state.json"
#: sub-folder of a run folder that holds its checkpoints
CHECKPOINTS_DIRNAME = "checkpoints"
FORMAT = "diffusionkit-training-checkpoint"
FORMAT_VERSION = 1

_NAME = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


@dataclass
class Checkpoint:
    """A checkpoint read back from disk.

    Attributes:
        path: its folder.
        step: the number of optimizer steps taken when it was written.
        tensors: file stem (``"model"``, ``"ema"``, ...) -> name -> tensor.
        state: the content of ``state.json``.
    """

    path: Path
    step: int
    tensors: dict[str, dict[str, Tensor]]
    state: dict[str, Any]


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at ``step`` (zero-padded so names sort by step)."""
    return f"step-{step:08d}"


def _write_tensor_file(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """Write one safetensors file and flush it to disk."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    publishable(path)  # safetensors creates its files 0600


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    tensors: Mapping[str, Mapping[str, Tensor]],
    state: Mapping[str, Any],
    *,
    keep: int | None = None,
) -> Path:
    """Write a checkpoint folder ``root/step-XXXXXXXX`` atomically.

    Args:
        root: the folder of checkpoints (created if needed).
        step: the optimizer step count; names the folder.
        tensors: file stem -> tensors, one ``<stem>.safetensors`` file each.
        state: JSON-serializable data, written as ``state.json`` (after the tensors).
        keep: keep only the newest ``keep`` checkpoints in ``root`` (``None``: keep all).

    Returns:
        The checkpoint's folder.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for stem, group in tensors.items():
            _write_tensor_file(tmp / f"{stem}.safetensors", group)
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **state}
        _write_json(tmp / STATE_FILE, meta)  # last: its presence marks a complete folder
        fsync_dir(tmp)
        if final.exists():
            # a directory cannot replace a non-empty one: move the old aside first
            old = root / f"{_TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale_temporaries(root)
    if keep is not None:
        for old_checkpoint in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old_checkpoint, ignore_errors=True)
    return final


def _remove_stale_temporaries(root: Path) -> None:
    """Remove hidden folders left by saves that crashed (only one trainer writes a root)."""
    for entry in root.iterdir():
        if entry.name.startswith(_TMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints in ``root``, oldest (lowest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if match and (entry / STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """Resolve ``path`` to one checkpoint folder.

    Args:
        path: a checkpoint folder, a folder of checkpoints (the newest is taken), or a run
            folder with a ``checkpoints`` sub-folder (its newest is taken).

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no complete checkpoint.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: it does not exist")
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / CHECKPOINTS_DIRNAME, path):
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise FileNotFoundError(
        f"no checkpoint found in {path} (looked for {CHECKPOINTS_DIRNAME}/step-*)"
    )


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Read a checkpoint (``path`` as in :func:`find_checkpoint`)."""
    folder = find_checkpoint(path)
    with open(folder / STATE_FILE, encoding="utf-8") as f:
        state = json.load(f)
    if state.get("format") != FORMAT:
        raise ValueError(f"{folder / STATE_FILE} is not a diffusionkit training checkpoint")
    if int(state.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{folder} was written by a newer diffusionkit (checkpoint format "
            f"{state['format_version']}); upgrade diffusionkit to resume it"
        )
    device = str(map_location)
    tensors = {
        file.name.removesuffix(".safetensors"): load_file(str(file), device=device)
        for file in sorted(folder.glob("*.safetensors"))
    }
    return Checkpoint(path=folder, step=int(state["step"]), tensors=tensors, state=state)


def flatten_optimizer_state(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON.

    Tensor entries of ``state[param_id][key]`` become ``"state.<param_id>.<key>"``; other
    values go to ``json["scalars"][param_id][key]``; ``param_groups`` go to
    ``json["param_groups"]``. :func:`unflatten_optimizer_state` reverses it.
    """
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            if "." in key:
                raise ValueError(f"optimizer state key {key!r} contains '.'")
            if isinstance(value, Tensor):
                tensors[f"state.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    groups = [dict(group) for group in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], like: Mapping[str, Any]
) -> dict[str, Any]:
    """Rebuild an optimizer state dict from :func:`flatten_optimizer_state`'s output.

    Args:
        tensors: the flattened tensors.
        meta: the JSON part.
        like: the target optimizer's current ``state_dict()``, whose ``param_groups`` give the
            Python types (JSON turns tuples such as ``betas`` into lists).
    """
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    groups = []
    current = like["param_groups"]
    if len(current) != len(meta["param_groups"]):
        raise ValueError(
            f"the checkpoint's optimizer has {len(meta['param_groups'])} parameter groups, "
            f"this one has {len(current)}"
        )
    for saved, now in zip(meta["param_groups"], current, strict=True):
        group = dict(saved)
        for key, value in group.items():
            if isinstance(now.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
        groups.append(group)
    return {"state": state, "param_groups": groups}
