"""Classifier-free guidance (Ho & Salimans 2022): contrast conditional and unconditional outputs.

Convention (the one diffusers and most code bases use): with guidance scale ``w``,

    ``out = out_u + w (out_c - out_u)``,

where ``out_c`` is the network's output with the condition and ``out_u`` with the null
condition (labels ``-1``, conditioning images zeros). This is Ho & Salimans 2022, eq. 6,
``(1 + w') eps_c - w' eps_u``, with ``w = 1 + w'``. So ``w = 1`` is plain conditional sampling
(one network pass, no unconditional one), ``w = 0`` unconditional sampling, and ``w > 1``
guides. The combination is applied to the raw output; ``eps``, ``x0`` and ``v`` are all affine
in it for a fixed ``x_t``, so this is the same as guiding ``eps`` for every prediction type.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffusionkit.conditioning import null_condition

__all__ = ["NetFn", "check_guidance_scale", "classifier_free_guidance", "guided"]

#: ``net_fn(x, t, labels, cond) -> out``: a network call with optional conditioning
NetFn = Callable[[Tensor, Tensor, "Tensor | None", "Tensor | None"], Tensor]


def check_guidance_scale(scale: float | None) -> float | None:
    """Validate a guidance scale: ``None`` or a finite number ``>= 0``."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise TypeError(f"guidance_scale must be a number or None, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {scale}")
    return float(scale)


def classifier_free_guidance(out_cond: Tensor, out_uncond: Tensor, scale: float) -> Tensor:
    """``out_u + scale (out_c - out_u)`` (Ho & Salimans 2022, eq. 6 with ``w' = scale - 1``).

    Args:
        out_cond: network output with the condition, ``(B, C, H, W)``.
        out_uncond: network output with the null condition, same shape.
        scale: the guidance scale ``w``.
    """
    return torch.lerp(out_uncond, out_cond, scale)


def guided(
    net_fn: NetFn,
    labels: Tensor | None,
    cond: Tensor | None,
    scale: float | None,
    learned_variance: bool = False,
) -> Callable[[Tensor, Tensor], Tensor]:
    """Return ``denoise(x, t) -> out``: the network with its condition bound, guided if asked.

    With ``scale`` ``None`` or ``1`` this is one conditional pass. Otherwise each call runs
    the conditional and the unconditional inputs as one batch of ``2B`` through the network
    and combines the halves with :func:`classifier_free_guidance`; the doubled conditioning
    inputs are built once, here, not at every step.

    Args:
        net_fn: the network call.
        labels: class labels ``(B,)`` or ``None``.
        cond: conditioning images ``(B, C_cond, H, W)`` or ``None``.
        scale: guidance scale ``w`` (see the module docstring) or ``None``.
        learned_variance: the output's second half of channels is a learned variance value
            (:mod:`diffusionkit.variance`): only the prediction is guided, and the variance
            is the conditional pass's (as GLIDE, Nichol et al. 2022, does).
    """
    scale = check_guidance_scale(scale)
    if scale is None or scale == 1.0:
        return lambda x, t: net_fn(x, t, labels, cond)
    if labels is None and cond is None:
        raise ValueError(
            "guidance_scale needs a condition to guide with: pass labels=... and/or cond=..."
        )
    null_labels, null_cond = null_condition(labels, cond)
    labels2 = None if labels is None or null_labels is None else torch.cat([labels, null_labels])
    cond2 = None if cond is None or null_cond is None else torch.cat([cond, null_cond])

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        out_cond, out_uncond = net_fn(torch.cat([x, x]), torch.cat([t, t]), labels2, cond2).chunk(2)
        if not learned_variance:
            return classifier_free_guidance(out_cond, out_uncond, scale)
        c = x.shape[1]
        guided_out = classifier_free_guidance(out_cond[:, :c], out_uncond[:, :c], scale)
        return torch.cat([guided_out, out_cond[:, c:]], dim=1)

    return denoise
