"""Training checkpoints: folders of safetensors files plus JSON, written atomically, verified.

Layout of one checkpoint, ``<root>/step-00001000/``::

    model.safetensors       the trained network's weights
    ema.safetensors         the EMA weights
    optimizer.safetensors   the optimizer's per-parameter tensors, flattened (see below)
    rng.safetensors         random-number-generator states (uint8 tensors)
    state.json              everything else: step, data order, learning-rate schedule, loss
                            scale, EMA count, optimizer hyperparameters, configs
    manifest.json           size and sha256 of every file above; written last

No pickle anywhere: tensors go to safetensors, everything else to JSON. The folder is first
written under a hidden temporary name in the same parent, flushed to disk, and then renamed
into place with ``os.replace``; a crash mid-save leaves only the hidden folder (ignored and
later removed), never a damaged checkpoint, and older checkpoints stay untouched.

``manifest.json`` is what makes a checkpoint trustworthy after it was written: a flipped bit,
a truncated or deleted file (a disk error, a careless ``rm``, a copy that stopped halfway) no
longer resumes silently with wrong or fresh state. Loading reads each file once, checks its
size and sha256 against the manifest, and only then parses it. Checkpoints written before
manifests existed (format 1) still load, with :attr:`Checkpoint.verified` ``False``.

When the newest checkpoint of a folder is damaged, :func:`load_checkpoint` and
:func:`find_checkpoint` raise :class:`CheckpointCorruptError`, which names the problem and lists
the checkpoints that are valid; ``fallback=True`` takes the newest valid one instead and
records the skipped ones in :attr:`Checkpoint.skipped`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor

from diffusionkit.utils.atomic import fsync_dir, publishable
from diffusionkit.utils.files import read_regular

__all__ = [
    "ABANDONED_DIRNAME",
    "CHECKPOINTS_DIRNAME",
    "MANIFEST_FILE",
    "STATE_FILE",
    "Checkpoint",
    "CheckpointCorruptError",
    "CheckpointWriteError",
    "find_checkpoint",
    "flatten_optimizer_state",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "set_aside_newer",
    "unflatten_optimizer_state",
    "verify_checkpoint",
]

#: name of the JSON file of a checkpoint's state
STATE_FILE = "state.json"
#: name of the file listing every other file's size and sha256; its presence marks a complete
#: checkpoint (it is written last)
MANIFEST_FILE = "manifest.json"
#: sub-folder of a run folder that holds its checkpoints
CHECKPOINTS_DIRNAME = "checkpoints"
#: sub-folder of a checkpoints folder where :func:`set_aside_newer` moves abandoned checkpoints
ABANDONED_DIRNAME = "abandoned"
FORMAT = "diffusionkit-training-checkpoint"
#: 1: no manifest (cannot be verified); 2: with ``manifest.json``
FORMAT_VERSION = 2

_NAME = re.compile(r"^step-(\d+)$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TMP_PREFIX = ".tmp-"


class CheckpointCorruptError(ValueError):
    """A checkpoint is incomplete or damaged.

    Attributes:
        path: the damaged checkpoint folder.
        problem: what is wrong with it, e.g. ``"model.safetensors: sha256 mismatch"``.
        valid: the valid checkpoints of the same folder, newest first (empty when it was
            named explicitly or none is valid).
    """

    def __init__(self, message: str, *, path: Path, problem: str, valid: list[Path]) -> None:
        super().__init__(message)
        self.path = path
        self.problem = problem
        self.valid = valid


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, a permission); nothing of it was kept.

    Attributes:
        path: the checkpoint folder that was being written.
        file: the file being written when it failed.
    """

    def __init__(self, err: int | None, message: str, *, path: Path, file: str) -> None:
        super().__init__(err, message)
        self.path = path
        self.file = file

    def __str__(self) -> str:
        return str(self.strerror)


class _Damaged(Exception):
    """Internal: one checkpoint failed a check (the message is the problem)."""


@dataclass
class Checkpoint:
    """A checkpoint read back from disk.

    Attributes:
        path: its folder.
        step: the number of optimizer steps taken when it was written.
        tensors: file stem (``"model"``, ``"ema"``, ...) -> name -> tensor.
        state: the content of ``state.json``.
        verified: whether its files were checked against a manifest (``False`` for checkpoints
            written before manifests existed).
        skipped: newer checkpoints passed over with ``fallback=True``, with their problem.
    """

    path: Path
    step: int
    tensors: dict[str, dict[str, Tensor]]
    state: dict[str, Any]
    verified: bool = True
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint at ``step`` (zero-padded so names sort by step)."""
    return f"step-{step:08d}"


# ----------------------------------------------------------------------------- writing


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data``, flush it to disk; returns its manifest entry."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    publishable(path)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _tensor_bytes(tensors: Mapping[str, Tensor]) -> bytes:
    return save_safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def _write_tensor_file(path: Path, tensors: Mapping[str, Tensor]) -> dict[str, Any]:
    """Write one safetensors file and flush it to disk; returns its manifest entry."""
    return _write_file(path, _tensor_bytes(tensors))


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, allow_nan=False) + "\n").encode("utf-8")


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    tensors: Mapping[str, Mapping[str, Tensor]],
    state: Mapping[str, Any],
    *,
    keep: int | None = None,
) -> Path:
    """Write a checkpoint folder ``root/step-XXXXXXXX`` atomically, with its manifest.

    Args:
        root: the folder of checkpoints (created if needed).
        step: the optimizer step count; names the folder.
        tensors: file stem -> tensors, one ``<stem>.safetensors`` file each.
        state: JSON-serializable data, written as ``state.json`` (after the tensors).
        keep: keep only the newest ``keep`` checkpoints in ``root`` (``None``: keep all).

    Returns:
        The checkpoint's folder.

    Raises:
        CheckpointWriteError: a file could not be written (a full disk, for instance); the
            message names it, and nothing of the new checkpoint is left behind.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    root = Path(root)
    final = root / checkpoint_name(step)
    current = "the folder"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as error:
        raise _write_error(error, final, current) from None
    try:
        files: dict[str, Any] = {}
        for stem, group in tensors.items():
            current = f"{stem}.safetensors"
            files[current] = _write_tensor_file(tmp / current, group)
        current = STATE_FILE
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **state}
        files[STATE_FILE] = _write_file(tmp / STATE_FILE, _json_bytes(meta))
        current = MANIFEST_FILE  # last: its presence marks a complete folder
        _write_file(tmp / MANIFEST_FILE, _json_bytes({"format": FORMAT, "files": files}))
        fsync_dir(tmp)
        current = "the folder"
        if final.exists():
            # a directory cannot replace a non-empty one: move the old aside first
            old = root / f"{_TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise _write_error(error, final, current) from None
        raise
    _remove_stale_temporaries(root)
    if keep is not None:
        for old_checkpoint in list_checkpoints(root)[:-keep]:
            _remove(old_checkpoint)
    return final


def _write_error(error: OSError, final: Path, current: str) -> CheckpointWriteError:
    reason = error.strerror or str(error)
    hint = " (the disk is full: free space)" if error.errno == errno.ENOSPC else ""
    return CheckpointWriteError(
        error.errno,
        f"could not write checkpoint {final}: writing {current} failed: {reason}{hint}; "
        "nothing of this checkpoint was kept and the checkpoints written before it are intact",
        path=final,
        file=current,
    )


def _remove(folder: Path) -> None:
    """Delete a checkpoint so that it disappears at once: rename it to a hidden name first
    (a crash during the deletion then leaves a hidden folder, not a half-deleted checkpoint)."""
    hidden = folder.parent / f"{_TMP_PREFIX}del-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.replace(folder, hidden)
    except OSError:
        return
    shutil.rmtree(hidden, ignore_errors=True)


def _remove_stale_temporaries(root: Path) -> None:
    """Remove hidden folders left by saves that crashed (the run lock keeps other writers out)."""
    for entry in root.iterdir():
        if entry.name.startswith(_TMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def set_aside_newer(root: str | os.PathLike[str], step: int) -> list[Path]:
    """Move the checkpoints of ``root`` newer than ``step`` into ``root/abandoned/``.

    Resuming from an older checkpoint starts a new branch of the run; the newer checkpoints
    belong to the abandoned one and would otherwise win the next "newest checkpoint" lookup.
    They are moved, not deleted, so that nothing is lost if the older one was picked by mistake.

    Returns:
        The new locations of the moved checkpoints, oldest first.
    """
    root = Path(root)
    moved = []
    for folder in list_checkpoints(root):
        if _step_of(folder) <= step:
            continue
        target_dir = root / ABANDONED_DIRNAME
        target_dir.mkdir(exist_ok=True)
        target = target_dir / folder.name
        n = 1
        while target.exists():
            n += 1
            target = target_dir / f"{folder.name}-{n}"
        os.replace(folder, target)
        moved.append(target)
    if moved:
        fsync_dir(root)
    return moved


# ----------------------------------------------------------------------------- finding


def _step_of(folder: Path) -> int:
    match = _NAME.match(folder.name)
    return int(match.group(1)) if match else -1


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint folders (``step-XXXXXXXX``) in ``root``, oldest (lowest step) first.

    Nothing is verified here: a folder is listed whether it is complete or not (see
    :func:`verify_checkpoint`). Hidden folders of saves in progress are not listed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (_step_of(entry), entry)
        for entry in root.iterdir()
        if _NAME.match(entry.name) and entry.is_dir()
    ]
    return [path for _, path in sorted(found)]


def _candidates(path: str | os.PathLike[str]) -> tuple[bool, list[Path]]:
    """``(named explicitly, checkpoint folders newest first)`` for a path as
    :func:`find_checkpoint` takes it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: it does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; pass a checkpoint folder or a run folder")
    if (path / MANIFEST_FILE).exists() or (path / STATE_FILE).exists() or _NAME.match(path.name):
        return True, [path]
    for root in (path / CHECKPOINTS_DIRNAME, path):
        found = list_checkpoints(root)
        if found:
            return False, found[::-1]
    raise FileNotFoundError(
        f"no checkpoint found in {path} (looked for {CHECKPOINTS_DIRNAME}/step-*)"
    )


_T = TypeVar("_T")


def _first_valid(
    path: str | os.PathLike[str], attempt: Callable[[Path], _T], fallback: bool
) -> tuple[_T, list[tuple[Path, str]]]:
    """``attempt`` the checkpoints of ``path`` newest first; see :func:`load_checkpoint`."""
    explicit, candidates = _candidates(path)
    skipped: list[tuple[Path, str]] = []
    for folder in candidates:
        try:
            return attempt(folder), skipped
        except _Damaged as damage:
            skipped.append((folder, str(damage)))
            if explicit or not fallback:
                break
    damaged, problem = skipped[0]
    valid = [] if explicit else _valid_among(candidates[len(skipped) :])
    if explicit:
        advice = "resume from another checkpoint of the run"
    elif valid:
        names = ", ".join(p.name for p in valid)
        advice = (
            f"valid checkpoints, newest first: {names}; resume from the newest valid one with "
            "fallback=True, or pass its folder"
        )
    else:
        advice = f"no other checkpoint in {damaged.parent} is valid; start the run again"
    raise CheckpointCorruptError(
        f"checkpoint {damaged} is damaged: {problem}; {advice}",
        path=damaged,
        problem=problem,
        valid=valid,
    )


def _valid_among(folders: list[Path]) -> list[Path]:
    valid = []
    for folder in folders:
        try:
            _verify(folder)
        except _Damaged:
            continue
        valid.append(folder)
    return valid


def find_checkpoint(path: str | os.PathLike[str], *, fallback: bool = False) -> Path:
    """Resolve ``path`` to one checkpoint folder, verified against its manifest.

    Args:
        path: a checkpoint folder, a folder of checkpoints (the newest is taken), or a run
            folder with a ``checkpoints`` sub-folder (its newest is taken).
        fallback: when the newest checkpoint is damaged, take the newest valid one instead of
            raising.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no checkpoint.
        CheckpointCorruptError: the checkpoint (the newest one, without ``fallback``) is
            incomplete or damaged; its ``valid`` attribute lists the valid ones.
    """

    def verified(folder: Path) -> Path:
        _verify(folder)
        return folder

    found, _ = _first_valid(path, verified, fallback)
    return found


def verify_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """Check one checkpoint folder against its manifest (sizes and sha256 of every file).

    Returns:
        ``True`` when verified; ``False`` for a checkpoint written before manifests existed
        (format 1), which cannot be verified.

    Raises:
        CheckpointCorruptError: a file is missing, of the wrong size or content, or the
            manifest or ``state.json`` is unreadable.
    """
    folder = Path(folder)
    try:
        return _verify(folder)
    except _Damaged as damage:
        raise CheckpointCorruptError(
            f"checkpoint {folder} is damaged: {damage}", path=folder, problem=str(damage), valid=[]
        ) from None


# ----------------------------------------------------------------------------- reading


def _manifest(folder: Path) -> dict[str, dict[str, Any]] | None:
    """The manifest's files, checked for form; ``None`` when the folder has no manifest."""
    path = folder / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(read_regular(path, "checkpoint manifest"))
    except (OSError, ValueError) as error:
        raise _Damaged(f"{MANIFEST_FILE} is unreadable ({error})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("format") != FORMAT or not isinstance(files, dict):
        raise _Damaged(f"{MANIFEST_FILE} is not a diffusionkit checkpoint manifest")
    for name, entry in files.items():
        if (
            not _FILE.match(name)
            or not isinstance(entry, dict)
            or not isinstance(entry.get("size"), int)
            or not _SHA256.match(str(entry.get("sha256", "")))
        ):
            raise _Damaged(f"{MANIFEST_FILE} has a malformed entry for {name!r}")
    if STATE_FILE not in files:
        raise _Damaged(f"{MANIFEST_FILE} does not list {STATE_FILE}")
    return files


def _read_listed(folder: Path, name: str, entry: Mapping[str, Any]) -> bytes:
    """A file of the manifest, checked against its size and sha256."""
    path = folder / name
    try:
        data = read_regular(path, "checkpoint file")
    except FileNotFoundError:
        raise _Damaged(f"{name} is missing") from None
    except OSError as error:
        raise _Damaged(f"{name} is unreadable ({error})") from None
    if len(data) != entry["size"]:
        raise _Damaged(f"{name} has {len(data)} bytes, the manifest says {entry['size']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _Damaged(f"{name} does not match its sha256 in the manifest (its content changed)")
    return data


def _parse_state(folder: Path, data: bytes, *, verified: bool) -> dict[str, Any]:
    try:
        state = json.loads(data)
    except ValueError as error:
        raise _Damaged(f"{STATE_FILE} is not valid JSON ({error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _Damaged(f"{STATE_FILE} is not a diffusionkit training checkpoint's state")
    version = state.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _Damaged(f"{STATE_FILE} has format_version {version!r}, expected 1 or 2")
    if version > FORMAT_VERSION:
        raise _Damaged(
            f"it was written by a newer diffusionkit (checkpoint format {version}); upgrade "
            "diffusionkit to resume it"
        )
    if version >= 2 and not verified:
        raise _Damaged(f"{MANIFEST_FILE} is missing (the checkpoint is incomplete)")
    step = state.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _Damaged(f"{STATE_FILE} has step {step!r}; it must be an integer >= 0")
    named = _step_of(folder)
    if named >= 0 and named != step:
        raise _Damaged(f"{STATE_FILE} says step {step}, but the folder is named {folder.name}")
    return state


def _verify(folder: Path) -> bool:
    files = _manifest(folder)
    if files is None:
        _parse_state(folder, _read_legacy_state(folder), verified=False)
        return False
    for name, entry in files.items():
        data = _read_listed(folder, name, entry)
        if name == STATE_FILE:
            _parse_state(folder, data, verified=True)
    return True


def _read_legacy_state(folder: Path) -> bytes:
    try:
        return read_regular(folder / STATE_FILE, "checkpoint state")
    except FileNotFoundError:
        raise _Damaged(
            f"it has neither {MANIFEST_FILE} nor {STATE_FILE} (the checkpoint is incomplete)"
        ) from None
    except OSError as error:
        raise _Damaged(f"{STATE_FILE} is unreadable ({error})") from None


def _parse_tensors(name: str, data: bytes, device: str) -> dict[str, Tensor]:
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise _Damaged(f"{name} is not a readable safetensors file ({error})") from None
    if device != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


def _read(folder: Path, device: str) -> Checkpoint:
    """Read one checkpoint, verifying every file before it is parsed."""
    files = _manifest(folder)
    tensors: dict[str, dict[str, Tensor]] = {}
    if files is None:  # format 1: no manifest, nothing to verify against
        state = _parse_state(folder, _read_legacy_state(folder), verified=False)
        for file in sorted(folder.glob("*.safetensors")):
            try:
                data = read_regular(file, "checkpoint file")
            except OSError as error:
                raise _Damaged(f"{file.name} is unreadable ({error})") from None
            tensors[file.stem] = _parse_tensors(file.name, data, device)
        return Checkpoint(folder, state["step"], tensors, state, verified=False)
    state = _parse_state(folder, _read_listed(folder, STATE_FILE, files[STATE_FILE]), verified=True)
    for name, entry in files.items():
        if name == STATE_FILE:
            continue
        data = _read_listed(folder, name, entry)  # every listed file must be intact
        if name.endswith(".safetensors"):
            tensors[name.removesuffix(".safetensors")] = _parse_tensors(name, data, device)
    return Checkpoint(folder, state["step"], tensors, state, verified=True)


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    fallback: bool = False,
) -> Checkpoint:
    """Read a checkpoint, verifying each file against the manifest before using it.

    Args:
        path: as in :func:`find_checkpoint`: a checkpoint folder, or a folder of checkpoints
            or a run folder (the newest checkpoint is taken).
        map_location: device of the loaded tensors.
        fallback: when the newest checkpoint is damaged, load the newest valid one instead
            of raising (the skipped ones are listed in :attr:`Checkpoint.skipped`).

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no checkpoint.
        CheckpointCorruptError: the checkpoint (the newest one, without ``fallback``) is
            incomplete or damaged; the message and the ``valid`` attribute list the valid ones.
    """
    device = str(torch.device(map_location))
    checkpoint, skipped = _first_valid(path, lambda folder: _read(folder, device), fallback)
    checkpoint.skipped = skipped
    return checkpoint


# ----------------------------------------------------------------------------- optimizer


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

    Raises:
        ValueError: the tensors or the JSON part do not have the form written by
            :func:`flatten_optimizer_state`, or the parameter groups do not match ``like``.
    """
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit():
            raise ValueError(f"optimizer tensor {name!r} is not named state.<param id>.<key>")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    scalars = meta.get("scalars", {})
    groups_meta = meta.get("param_groups")
    if not isinstance(scalars, dict) or not isinstance(groups_meta, list):
        raise ValueError("the optimizer state has no param_groups list and scalars mapping")
    for param_id, entries in scalars.items():
        if not str(param_id).isdigit() or not isinstance(entries, dict):
            raise ValueError(f"optimizer scalars entry {param_id!r} is malformed")
        state.setdefault(int(param_id), {}).update(entries)
    groups = []
    current = like["param_groups"]
    if len(current) != len(groups_meta):
        raise ValueError(
            f"the checkpoint's optimizer has {len(groups_meta)} parameter groups, "
            f"this one has {len(current)}"
        )
    for saved, now in zip(groups_meta, current, strict=True):
        if not isinstance(saved, dict):
            raise ValueError("an optimizer parameter group is not a mapping")
        group = dict(saved)
        for key, value in group.items():
            if isinstance(now.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
        groups.append(group)
    return {"state": state, "param_groups": groups}
