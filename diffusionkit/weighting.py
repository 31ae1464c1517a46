"""Per-timestep weights of the training loss.

The simple DDPM objective (Ho et al. 2020, eq. 14) weights every timestep equally in the
network's own target (``eps``, ``x0`` or ``v``). A :class:`LossWeighting` rescales the squared
error of each sample by a weight that depends on the signal-to-noise ratio
``snr_t = abar_t / (1 - abar_t)`` of its timestep and on what the network predicts. Pass one to
``DenoiseDiffusion(..., weighting=...)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from diffusionkit.configurable import Component
from diffusionkit.prediction import Prediction
from diffusionkit.registry import Registry

__all__ = ["WEIGHTINGS", "LossWeighting", "MinSNRWeighting"]


class LossWeighting(Component, ABC):
    """Abstract per-timestep loss weight ``w(snr_t)`` for one prediction type.

    The constructor arguments are recorded as ``config()`` (see
    :class:`~diffusionkit.configurable.Component`).
    """

    @abstractmethod
    def weights(self, snr: Tensor, prediction: Prediction) -> Tensor:
        """Return the weight of each sample, shaped like ``snr``.

        Args:
            snr: signal-to-noise ratios ``abar_t / (1 - abar_t)`` of the samples' timesteps,
                ``(B,)``, ``>= 0`` (``0`` at the last step of a zero-terminal-SNR schedule).
            prediction: what the network predicts; the same weighting in terms of ``x0`` error
                becomes a different weight on the ``eps`` or ``v`` error.
        """


class MinSNRWeighting(LossWeighting):
    """Min-SNR-gamma weighting (Hang et al. 2023, eq. 8 and Sec. 3.4).

    In terms of the ``x0`` error the weight is ``min(snr_t, gamma)``: the usual SNR weighting
    of the ``eps`` objective, clamped so that nearly clean timesteps cannot dominate. Since
    ``||eps - eps_hat||² = snr ||x0 - x0_hat||²`` and ``||v - v_hat||² = (snr + 1) ||x0 -
    x0_hat||²``, the weight on the network's own error is

    * ``eps``: ``min(snr, gamma) / snr`` (computed as ``min(1, gamma / snr)``, which is ``1``
      at ``snr = 0``);
    * ``x0``: ``min(snr, gamma)``;
    * ``v``: ``min(snr, gamma) / (snr + 1)``.

    Args:
        gamma: the clamp; the paper's default is 5.
    """

    def __init__(self, gamma: float = 5.0) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma > 0:
            raise ValueError(f"gamma must be a positive number, got {gamma!r}")
        self.gamma = float(gamma)

    def weights(self, snr: Tensor, prediction: Prediction) -> Tensor:
        prediction = Prediction(prediction)
        clamped = snr.clamp(max=self.gamma)
        if prediction is Prediction.EPS:
            # min(snr, gamma) / snr without 0 / 0 at snr = 0 (gamma / 0 = inf, clamped to 1)
            return (self.gamma / snr).clamp(max=1.0)
        if prediction is Prediction.X0:
            return clamped
        return clamped / (snr + 1.0)


#: loss weightings by class name and short name, for configs
WEIGHTINGS: Registry[LossWeighting] = Registry("loss weighting")
WEIGHTINGS.register(MinSNRWeighting, "min-snr")
