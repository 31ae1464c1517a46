"""The training objective: what the network is trained to predict, and how errors are weighted.

The simplified DDPM objective (Ho et al. 2020, eq. 14) is the mean squared error between the
network's output on ``x_t`` and its target, the noise ``eps`` (Ho et al.), the clean image
``x0``, or the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022,
Sec. 4). A :class:`~diffusionkit.LossWeighting` rescales each sample's error by a function of
its timestep's SNR (e.g. Min-SNR, Hang et al. 2023).

A network that learns its variance is trained with the hybrid objective of Nichol & Dhariwal
(2021, Sec. 3.1), ``L_simple + lambda L_vlb``: :func:`variational_term` is ``L_vlb``'s term at
the sampled timestep, with the gradient stopped on the mean so that ``L_vlb`` trains the
variance only.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from diffusionkit.likelihood import bound_term, model_log_variance
from diffusionkit.prediction import Prediction, predicted_x0
from diffusionkit.samplers.ddpm import Variance
from diffusionkit.schedules import NoiseSchedule
from diffusionkit.weighting import LossWeighting

__all__ = ["DenoisingLoss", "training_target", "variational_term"]


def training_target(
    prediction: Prediction, x0: Tensor, noise: Tensor, a: Tensor, b: Tensor
) -> Tensor:
    """What the network should output for ``x_t = a x0 + b noise``, all ``(B, C, H, W)``.

    Args:
        prediction: what the network predicts.
        x0: clean images.
        noise: the ``eps`` that noised them.
        a: ``sqrt(abar_t)`` ``(B, 1, 1, 1)``.
        b: ``sqrt(1 - abar_t)`` ``(B, 1, 1, 1)``.
    """
    if prediction is Prediction.EPS:
        return noise
    if prediction is Prediction.X0:
        return x0
    return a * noise - b * x0  # v (Salimans & Ho 2022, eq. after 9)


class DenoisingLoss:
    """``E w_t || target - out ||²``: the simplified objective, optionally SNR-weighted.

    Args:
        prediction: what the network predicts (sets the target).
        weighting: per-timestep weights; ``None`` is the unweighted mean (Ho et al. eq. 14).
    """

    def __init__(self, prediction: Prediction, weighting: LossWeighting | None = None) -> None:
        self.prediction = prediction
        self.weighting = weighting

    def __call__(
        self,
        out: Tensor,
        x0: Tensor,
        noise: Tensor,
        a: Tensor,
        b: Tensor,
        snr: Tensor | None = None,
    ) -> Tensor:
        """The scalar loss of the network output ``out`` on ``x_t = a x0 + b noise``.

        Args:
            out: the network's output ``(B, C, H, W)``.
            x0, noise: ``(B, C, H, W)``.
            a, b: ``sqrt(abar_t)`` and ``sqrt(1 - abar_t)``, ``(B, 1, 1, 1)``.
            snr: ``abar_t / (1 - abar_t)`` ``(B,)`` float32; needed with a weighting only.
        """
        target = training_target(self.prediction, x0, noise, a, b)
        if self.weighting is None:
            return F.mse_loss(out.float(), target.float())
        if snr is None:
            raise ValueError("a weighted loss needs the timesteps' snr")
        per_sample = (out.float() - target.float()).square().flatten(1).mean(dim=1)  # (B,)
        return (self.weighting.weights(snr, self.prediction) * per_sample).mean()


def variational_term(
    out: Tensor,
    v: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    a: Tensor,
    b: Tensor,
    prediction: Prediction,
    schedule: NoiseSchedule,
) -> Tensor:
    """``L_t`` of the variational bound at each sample's timestep, in bits/dim, ``(B,)``,
    float32, for the hybrid loss (Nichol & Dhariwal 2021, Sec. 3.1).

    The mean comes from ``out`` with its gradient stopped (``L_vlb`` must not pull the mean
    away from ``L_simple``'s optimum), the variance from ``v`` (:mod:`diffusionkit.variance`);
    ``x0_hat`` is not processed (clipped), as in improved-diffusion's training.

    Args:
        out: the network's prediction ``(B, C, H, W)`` (its first ``C`` channels).
        v: its variance value ``(B, C, H, W)`` (the last ``C``).
        x0: the data, ``(B, C, H, W)``.
        x_t: its noised version, ``(B, C, H, W)``.
        t: ``(B,)`` int64 timesteps.
        a: ``sqrt(abar_t)``, ``(B, 1, 1, 1)``.
        b: ``sqrt(1 - abar_t)``, ``(B, 1, 1, 1)``.
        prediction: what ``out`` is.
        schedule: the model's schedule.
    """
    x0, x_t = x0.float(), x_t.float()
    x0_hat = predicted_x0(out.detach().float(), x_t, a.float(), b.float(), prediction)
    log_variance = model_log_variance(v.float(), t, schedule, Variance.POSTERIOR, x_t)
    return bound_term(x0, x_t, t, x0_hat, log_variance, schedule)
