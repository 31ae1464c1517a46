"""The single place where pixel values are mapped to the model range [-1, 1].

DDPM models are trained on images in [-1, 1]. Data in [0, 1] or [0, 255] trains without any
error and then samples wrong images, which is one of the most reported problems with diffusion
libraries. Every dataset in :mod:`diffusionkit.data` therefore converts through
:func:`to_model_range` and checks through :func:`check_model_range`, which fail loudly with the
values found and the argument that fixes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: The range every image of a diffusionkit dataset is in.
MODEL_RANGE: tuple[float, float] = (-1.0, 1.0)

# Float data may overshoot its range by rounding (e.g. (x - 0.5) / 0.5 in float16); values
# within this fraction of the range's width are clamped instead of rejected.
_TOLERANCE = 1e-3


def to_model_range(
    x: Tensor | np.ndarray, value_range: tuple[float, float] | None = None, *, what: str = "data"
) -> Tensor:
    """Map pixel values from ``value_range`` linearly onto [-1, 1].

    ``value_range[0]`` maps to exactly -1 and ``value_range[1]`` to exactly 1.

    Args:
        x: pixel values of any shape, e.g. ``(C, H, W)`` or ``(N, C, H, W)``; uint8, any
            integer type, or float, as a tensor or numpy array.
        value_range: ``(low, high)`` that ``x`` is in, e.g. ``(0, 255)``, ``(0, 1)`` or
            ``(0, 16)``. May be omitted only for uint8 data, which is taken as ``(0, 255)``;
            for other types the range is ambiguous and must be given.
        what: how to name the data in error messages, e.g. ``"item 3"``.

    Returns:
        float32 tensor of the same shape with values in [-1, 1].

    Raises:
        ValueError: when ``x`` holds values outside ``value_range`` (or NaN/inf), with the
            minimum and maximum found.
        TypeError: when ``value_range`` is omitted for data that is not uint8.
    """
    t = torch.as_tensor(x)
    if value_range is None:
        if t.dtype != torch.uint8:
            raise TypeError(
                f"{what} has dtype {t.dtype}, so its range is ambiguous (only uint8 defaults to "
                "(0, 255)); pass e.g. value_range=(0, 1) or value_range=(0, 255)"
            )
        value_range = (0.0, 255.0)
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    _check_bounds(t, low, high, what=what)
    t = t.to(torch.float32)
    if (low, high) == MODEL_RANGE:
        # Already in range: skip the arithmetic so that values pass through bit for bit.
        return t.clamp(-1.0, 1.0)
    # (x - low) / (high - low) is exactly 0 at low and exactly 1 at high in IEEE arithmetic,
    # so the endpoints land on exactly -1 and 1.
    return ((t - low) / (high - low) * 2.0 - 1.0).clamp_(-1.0, 1.0)


def ensure_model_range(
    x: Tensor | np.ndarray,
    value_range: tuple[float, float] | None = None,
    *,
    what: str = "data",
    strict_sign: bool = True,
) -> Tensor:
    """Return user data as float32 in [-1, 1], converting or checking as ``value_range`` says.

    * ``value_range`` given: converted from that range by :func:`to_model_range`.
    * uint8 data without ``value_range``: taken as (0, 255) and converted.
    * float data without ``value_range``: expected in [-1, 1] and checked by
      :func:`check_model_range` (so [0, 1] or [0, 255] data raises instead of training on
      wrong values).

    Args:
        x: pixel values of any shape, e.g. ``(N, C, H, W)``.
        value_range: ``(low, high)`` of ``x``, or None as above.
        what: how to name the data in error messages.
        strict_sign: passed to :func:`check_model_range`.

    Returns:
        float32 tensor of the same shape, in [-1, 1].
    """
    t = torch.as_tensor(x)
    if value_range is not None or t.dtype == torch.uint8:
        return to_model_range(t, value_range, what=what)
    if not t.is_floating_point():
        raise TypeError(
            f"{what} has dtype {t.dtype}; pass value_range=(low, high) with the range of its "
            "values (e.g. (0, 255)) so it can be converted to [-1, 1]"
        )
    t = t.to(torch.float32)
    check_model_range(t, what=what, strict_sign=strict_sign)
    return t.clamp(-1.0, 1.0)


def check_model_range(x: Tensor, *, what: str = "data", strict_sign: bool = True) -> None:
    """Check that float data claimed to be in [-1, 1] really is.

    Besides the bounds, this catches the common mistake of passing [0, 1] data: images in
    [-1, 1] practically always have negative pixels (anything darker than mid-grey), so data
    with no negative value at all is rejected when ``strict_sign`` is true. Callers whose data
    genuinely is in [-1, 1] and non-negative say so with ``value_range=(-1, 1)``.

    Args:
        x: float tensor of any shape, e.g. ``(N, C, H, W)``.
        what: how to name the data in the error message.
        strict_sign: also reject data without any negative value.

    Raises:
        ValueError: saying the minimum and maximum found and which ``value_range`` converts.
    """
    lo, hi = _check_bounds(x, *MODEL_RANGE, what=what)
    if strict_sign and x.numel() > 0 and lo >= 0.0:
        raise ValueError(
            f"{what} was expected in [-1, 1] but has no negative value (min={lo:g}, max={hi:g}): "
            f"it looks like data in [0, 1], which would train a model whose samples are wrong. "
            f"{_advice(lo, hi)} If it really is in [-1, 1], pass value_range=(-1, 1) to "
            "accept it as it is."
        )


def _check_bounds(x: Tensor, low: float, high: float, *, what: str) -> tuple[float, float]:
    """Raise a ValueError with the min/max found unless ``low <= x <= high`` (within tolerance).

    Returns:
        ``(min, max)`` of ``x``; ``(low, high)`` for an empty tensor.
    """
    if x.numel() == 0:
        return low, high
    # One reduction for both ends; NaN propagates into it and infinities show up in it.
    lo_t, hi_t = torch.aminmax(x)
    lo, hi = float(lo_t), float(hi_t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what} contains NaN or infinite values")
    slack = _TOLERANCE * (high - low) if x.is_floating_point() else 0.0
    if lo < low - slack or hi > high + slack:
        raise ValueError(
            f"{what} has min={lo:g} and max={hi:g}, outside the expected range "
            f"{_fmt_range(low, high)}. {_advice(lo, hi, (low, high))}"
        )
    return lo, hi


def _advice(lo: float, hi: float, expected: tuple[float, float] = MODEL_RANGE) -> str:
    """Suggest the ``value_range`` argument matching data with this min and max."""
    for low, high in ((-1.0, 1.0), (0.0, 1.0), (0.0, 255.0)):
        slack = _TOLERANCE * (high - low)
        if (low, high) != expected and lo >= low - slack and hi <= high + slack:
            return (
                f"If your data is in {_fmt_range(low, high)}, pass "
                f"value_range={_fmt_range(low, high)} to convert it to [-1, 1]."
            )
    return (
        "Pass value_range=(low, high) with the range your data is in, and it is converted "
        "to [-1, 1]."
    )


def _fmt_range(low: float, high: float) -> str:
    return f"({low:g}, {high:g})"
