"""What a model does to its estimate of the clean image before any solver uses it.

Every solver builds its update from ``x0_hat`` (or from the ``eps_hat`` consistent with it).
Early in the reverse chain a network's ``x0_hat`` can leave the data range by a wide margin
(with the cosine schedule's last beta of 0.999 the first step multiplies the network's error
by ``1 / sqrt(1 - 0.999) ~ 32``), and clamping it back is what keeps few-step and
full-chain samples in range. That is a property of the *model* (how it was trained and on
what data), so it lives on :class:`~diffusionkit.DenoiseDiffusion` as ``x0_processing`` and
every solver, including one chosen by name, sees the processed ``x0_hat`` and the ``eps_hat``
re-derived from it (:class:`~diffusionkit.view.DenoiserView`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from diffusionkit.configurable import Component
from diffusionkit.registry import Registry

__all__ = ["X0_PROCESSINGS", "ClipX0", "DynamicThreshold", "X0Processing"]


class X0Processing(Component, ABC):
    """A map applied to ``x0_hat`` ``(B, C, H, W)`` before a solver reads it."""

    @abstractmethod
    def __call__(self, x0: Tensor) -> Tensor:
        """Return the processed ``x0_hat``, same shape and dtype (a new tensor)."""


class ClipX0(X0Processing):
    """Clamp ``x0_hat`` to the data range ``[-1, 1]`` (Ho et al. 2020's sampling code,
    improved-diffusion's ``clip_denoised``, diffusers' ``clip_sample``)."""

    def __call__(self, x0: Tensor) -> Tensor:
        return x0.clamp(-1.0, 1.0)


class DynamicThreshold(X0Processing):
    """Dynamic thresholding, Saharia et al. 2022 (Imagen), Sec. 2.3.

    Per sample, ``s`` is the ``percentile`` quantile of ``|x0_hat|`` over all its pixels,
    raised to at least 1 (and capped at ``max_value`` when given); ``x0_hat`` is then clamped
    to ``[-s, s]`` and divided by ``s``. So a sample whose estimate is already in range is
    unchanged, and one that saturates is pulled back inside ``[-1, 1]`` instead of being
    flattened at the bounds. ``max_value = 1`` is plain clipping (diffusers' default
    ``sample_max_value``).

    Args:
        percentile: the quantile of ``|x0_hat|`` that sets ``s``, in ``(0, 1]``; the paper
            uses 0.995 (diffusers' ``dynamic_thresholding_ratio``).
        max_value: upper bound of ``s`` (diffusers' ``sample_max_value``), ``>= 1``; ``None``
            leaves it unbounded, as in the paper.
    """

    def __init__(self, percentile: float = 0.995, max_value: float | None = None) -> None:
        if isinstance(percentile, bool) or not isinstance(percentile, int | float):
            raise TypeError(f"percentile must be a number, got {type(percentile).__name__}")
        if not 0.0 < percentile <= 1.0:
            raise ValueError(f"percentile must lie in (0, 1], got {percentile}")
        if max_value is not None and (
            isinstance(max_value, bool)
            or not isinstance(max_value, int | float)
            or not math.isfinite(max_value)
            or max_value < 1.0
        ):
            raise ValueError(f"max_value must be a finite number >= 1 or None, got {max_value!r}")
        self.percentile = float(percentile)
        self.max_value = None if max_value is None else float(max_value)

    def __call__(self, x0: Tensor) -> Tensor:
        flat = x0.abs().flatten(1)  # (B, C*H*W)
        if flat.dtype not in (torch.float32, torch.float64):  # quantile needs float32/64
            flat = flat.float()
        s = torch.quantile(flat, self.percentile, dim=1).clamp(min=1.0, max=self.max_value)
        s = s.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))  # (B, 1, 1, 1)
        return torch.maximum(torch.minimum(x0, s), -s) / s


#: x0 processings by class name and short name (``"clip"``, ``"dynamic-threshold"``)
X0_PROCESSINGS: Registry[X0Processing] = Registry("x0 processing")
X0_PROCESSINGS.register(ClipX0, "clip")
X0_PROCESSINGS.register(DynamicThreshold, "dynamic-threshold")
