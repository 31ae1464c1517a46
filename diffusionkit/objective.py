"""The training objective: what the network is trained to predict, and how errors are weighted.

The simplified DDPM objective (Ho et al. 2020, eq. 14) is the mean squared error between the
network's output on ``x_t`` and its target, the noise ``eps`` (Ho et al.), the clean image
``x0``, or the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022,
Sec. 4). A :class:`~diffusionkit.LossWeighting` rescales each sample's error by a function of
its timestep's SNR (e.g. Min-SNR, Hang et al. 2023).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from diffusionkit.prediction import Prediction
from diffusionkit.weighting import LossWeighting

__all__ = ["DenoisingLoss", "training_target"]


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
