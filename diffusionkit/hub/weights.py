"""Tensors to and from files: safetensors always, pickles only by explicit opt-in, strict loading.

Loading never trusts a file: the safetensors header is parsed and bounds-checked by safetensors,
then every tensor name, shape and dtype kind is compared with the network before anything is
copied, and the copy itself is ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from diffusionkit.hub.errors import CheckpointError

__all__ = [
    "PICKLE_SUFFIXES",
    "check_tensors",
    "fully_in_state_dict",
    "load_into",
    "read_pickled",
    "read_safetensors",
    "save_safetensors",
]

#: file endings of pickled PyTorch checkpoints, which diffusionkit never unpickles by default
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_SHOWN = 5  # names listed per kind of mismatch before "and N more"


def save_safetensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Write ``name -> tensor`` to ``path`` as safetensors (copied to CPU, contiguous)."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    save_file(cpu, str(path), metadata={"format": "pt"})


def read_safetensors(path: Path, label: str) -> dict[str, Tensor]:
    """Read every tensor of a safetensors file onto the CPU.

    Raises:
        CheckpointError: the file is missing, truncated, or its header is corrupt.
    """
    if not path.is_file():
        raise CheckpointError(f"{label}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{label}: not a valid safetensors file ({err}); it is truncated or corrupt"
        ) from None


def read_pickled(path: Path, label: str) -> dict[str, Tensor]:
    """Read a pickled state dict with ``torch.load(weights_only=True)`` (opt-in callers only).

    ``weights_only=True`` restricts unpickling to tensors and plain containers, so a malicious
    file cannot run code; the result must be a flat ``name -> tensor`` dict.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad or unsafe pickle
        raise CheckpointError(
            f"{label}: cannot load with torch.load(weights_only=True): {err}"
        ) from None
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{label}: expected a flat dict of tensors (a state dict)")
    return dict(obj)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def check_tensors(
    found: Mapping[str, Tensor], expected: Mapping[str, Tensor], label: str, what: str
) -> None:
    """Raise unless ``found`` has exactly the names, shapes and dtype kinds of ``expected``.

    Args:
        found: tensors read from a file.
        expected: the network's ``state_dict()``.
        label: the file, for the message.
        what: the network, for the message (e.g. ``"UNet"``).

    Raises:
        CheckpointError: listing the missing, unexpected and mis-shaped tensors.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
    wrong = []
    for name in sorted(set(found) & set(expected)):
        got, want = found[name], expected[name]
        if got.shape != want.shape:
            wrong.append(f"{name} is {tuple(got.shape)}, expected {tuple(want.shape)}")
        elif got.is_floating_point() != want.is_floating_point():
            wrong.append(f"{name} has dtype {got.dtype}, expected a {want.dtype}-like tensor")
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape or dtype: {_listing(wrong)}")
    if problems:
        raise CheckpointError(f"{label} does not match the {what}: " + "; ".join(problems))


def fully_in_state_dict(module: nn.Module) -> bool:
    """Whether loading a state dict sets every tensor of ``module`` (no non-persistent buffers).

    Only then may ``module`` be built on the meta device and filled by :func:`load_into`.
    """
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    return names <= module.state_dict().keys()


def load_into(module: nn.Module, tensors: Mapping[str, Tensor], label: str) -> None:
    """Load ``tensors`` into ``module`` strictly, keeping the file's dtype.

    A module built on the meta device (no memory, no random initialization to throw away)
    takes the tensors themselves; a materialized one is converted to the file's float dtype and
    copied into. Either way a round trip is exact: weights saved in bfloat16 come back in
    bfloat16 rather than widened to float32 (which would change every sample drawn).
    """
    state = module.state_dict()
    check_tensors(tensors, state, label, type(module).__name__)
    if any(t.is_meta for t in state.values()):
        module.load_state_dict(tensors, strict=True, assign=True)
        return
    float_dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        module.to(dtype=float_dtypes.pop())
    module.load_state_dict(tensors, strict=True)
