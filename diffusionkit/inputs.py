"""Checks of what users pass in: image batches, the data range, timesteps, shapes.

Each invariant is checked in one place, with a message that names the argument, what was
expected and what was given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "check_data_range",
    "check_image_batch",
    "check_noise",
    "check_shape",
    "check_timesteps",
]

#: values this far outside [-1, 1] are taken for data in another convention
_RANGE_SLACK = 1e-3


def check_shape(net: nn.Module, shape: Sequence[int]) -> None:
    """Raise ``ValueError`` if ``net`` cannot take images shaped ``shape`` ``(B, C, H, W)``
    (the network's own ``check_input_shape`` when it has one)."""
    check = getattr(net, "check_input_shape", None)
    if callable(check):
        check(tuple(shape))
    elif len(shape) != 4:
        raise ValueError(f"expected images shaped (B, C, H, W), got shape {tuple(shape)}")


def check_image_batch(name: str, x: object, net: nn.Module) -> Tensor:
    """``x`` if it is a floating ``(B, C, H, W)`` tensor that ``net`` can take."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be shaped (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}): pass at least one")
    check_shape(net, x.shape)
    return x


def check_data_range(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is finite and in diffusionkit's data range ``[-1, 1]``."""
    lo, hi = (v.item() for v in torch.aminmax(x.detach()))
    if not (abs(lo) < float("inf") and abs(hi) < float("inf")):
        raise ValueError(f"{name} contains NaN or infinite values")
    if lo < -1.0 - _RANGE_SLACK or hi > 1.0 + _RANGE_SLACK:
        raise ValueError(
            f"{name} must be scaled to [-1, 1] (diffusionkit's data convention); got values in "
            f"[{lo:.3g}, {hi:.3g}]. Map [0, 1] data with x * 2 - 1, or use diffusionkit.data, "
            "which scales for you."
        )


def check_timesteps(t: object, batch: int, timesteps: int, device: torch.device) -> Tensor:
    """0-based timesteps ``(B,)`` int64 on ``device``, from a tensor or one int for the batch.

    Raises:
        TypeError: not integers.
        ValueError: the wrong shape, or outside ``[0, timesteps - 1]``.
    """
    if isinstance(t, int) and not isinstance(t, bool):
        t = torch.full((batch,), t, dtype=torch.int64, device=device)
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be an int or an int64 tensor, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"t must hold integer timesteps (int64), got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be shaped ({batch},) to match the batch, got {tuple(t.shape)}")
    lo, hi = torch.aminmax(t)
    if lo.item() < 0 or hi.item() >= timesteps:
        raise ValueError(
            f"t must lie in [0, {timesteps - 1}] (0-based: t = 0 is the first noising "
            f"step), got values in [{lo.item()}, {hi.item()}]"
        )
    return t.to(device=device, dtype=torch.int64)


def check_noise(noise: object, shape: Sequence[int]) -> Tensor:
    """``noise`` if it is a finite floating tensor shaped ``shape``."""
    if not isinstance(noise, Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
    if not noise.is_floating_point():
        raise TypeError(f"noise must be a floating-point tensor, got {noise.dtype}")
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise shape {tuple(noise.shape)} != the images' {tuple(shape)}")
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or infinite values")
    return noise
