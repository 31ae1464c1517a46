"""What a denoising network predicts, and how to turn any prediction into ``(eps, x0)``."""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

__all__ = ["Prediction", "predicted_eps", "split_prediction"]


class Prediction(str, Enum):
    """What the network predicts from ``x_t``.

    With ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``:

    * ``EPS``: the noise ``eps`` (Ho et al. 2020, eq. 11-12);
    * ``X0``: the clean image ``x0``;
    * ``V``: the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022,
      Sec. 4).
    """

    EPS = "eps"
    X0 = "x0"
    V = "v"


def split_prediction(
    out: Tensor, x_t: Tensor, a: Tensor | float, b: Tensor | float, kind: Prediction
) -> tuple[Tensor, Tensor]:
    """Return ``(eps, x0)`` implied by the network output ``out`` at ``x_t``.

    Args:
        out: network output ``(B, C, H, W)``, of type ``kind``.
        x_t: the noisy input ``(B, C, H, W)``.
        a: ``sqrt(abar_t)``, a float or a tensor broadcastable to ``x_t``.
        b: ``sqrt(1 - abar_t)``, likewise.
        kind: what ``out`` is.
    """
    # x_t = a x0 + b eps (Ho et al. 2020, eq. 4); v = a eps - b x0 and x_t = a x0 + b eps, with
    # a² + b² = 1 (Salimans & Ho 2022, App. D)
    if not (isinstance(a, float) and isinstance(b, float)):  # per-sample tensors (training)
        if kind is Prediction.EPS:
            return out, (x_t - b * out) / a
        if kind is Prediction.X0:
            return (x_t - a * out) / b, out
        return b * x_t + a * out, a * x_t - b * out
    # the sampling loop's Python floats: fused ops, and the same eps as predicted_eps
    eps = predicted_eps(out, x_t, a, b, kind)
    if kind is Prediction.EPS:
        return eps, torch.add(x_t, out, alpha=-b).div_(a)
    if kind is Prediction.X0:
        return eps, out
    return eps, torch.mul(x_t, a).add_(out, alpha=-b)


def predicted_eps(out: Tensor, x_t: Tensor, a: float, b: float, kind: Prediction) -> Tensor:
    """Only the ``eps`` of :func:`split_prediction`, for a sampling step that does not read
    ``x0`` (the loop's Python-float coefficients).

    Args:
        out: network output ``(B, C, H, W)``, of type ``kind``.
        x_t: the noisy input ``(B, C, H, W)``.
        a: ``sqrt(abar_t)``.
        b: ``sqrt(1 - abar_t)``.
        kind: what ``out`` is.
    """
    if kind is Prediction.EPS:
        return out
    if kind is Prediction.X0:
        return (x_t - a * out) / b
    return torch.mul(x_t, b).add_(out, alpha=a)
