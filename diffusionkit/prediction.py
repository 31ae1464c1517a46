"""What a denoising network predicts, and how to turn any prediction into ``(eps, x0)``."""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

__all__ = ["Prediction", "eps_from_x0", "predicted_eps", "predicted_x0", "split_prediction"]


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
    return predicted_eps(out, x_t, a, b, kind), predicted_x0(out, x_t, a, b, kind)


# x_t = a x0 + b eps (Ho et al. 2020, eq. 4); v = a eps - b x0 and x_t = a x0 + b eps, with
# a² + b² = 1 (Salimans & Ho 2022, App. D). With the sampling loop's Python floats the
# formulas run as fused in-place ops; with per-sample tensors (training, predict_*) plainly.


def predicted_eps(
    out: Tensor, x_t: Tensor, a: Tensor | float, b: Tensor | float, kind: Prediction
) -> Tensor:
    """The ``eps`` implied by the network output ``out`` ``(B, C, H, W)`` at ``x_t``.

    Args:
        out: network output ``(B, C, H, W)``, of type ``kind``.
        x_t: the noisy input ``(B, C, H, W)``.
        a: ``sqrt(abar_t)``, a float or a tensor broadcastable to ``x_t``.
        b: ``sqrt(1 - abar_t)``, likewise.
        kind: what ``out`` is.
    """
    if kind is Prediction.EPS:
        return out
    if kind is Prediction.X0:
        return (x_t - a * out) / b
    if isinstance(a, float) and isinstance(b, float):
        return torch.mul(x_t, b).add_(out, alpha=a)
    return b * x_t + a * out


def predicted_x0(
    out: Tensor, x_t: Tensor, a: Tensor | float, b: Tensor | float, kind: Prediction
) -> Tensor:
    """The ``x0`` implied by the network output ``out`` ``(B, C, H, W)`` at ``x_t``.

    Arguments as in :func:`predicted_eps`. For ``eps`` it divides by ``a``, which is zero
    where the SNR is (the last step of a zero-terminal-SNR schedule).
    """
    if kind is Prediction.X0:
        return out
    if isinstance(a, float) and isinstance(b, float):
        if kind is Prediction.EPS:
            return torch.add(x_t, out, alpha=-b).div_(a)
        return torch.mul(x_t, a).add_(out, alpha=-b)
    if kind is Prediction.EPS:
        return (x_t - b * out) / a
    return a * x_t - b * out


def eps_from_x0(x_t: Tensor, x0: Tensor, a: float, b: float) -> Tensor:
    """``eps = (x_t - a x0) / b``: the noise consistent with ``x0`` ``(B, C, H, W)`` at ``x_t``
    (eq. 4 solved for ``eps``; ``b > 0`` at every timestep)."""
    return (x_t - a * x0) / b
