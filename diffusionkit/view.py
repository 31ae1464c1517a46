"""The denoiser view: what a trained model says about a noisy image, whatever it predicts.

A network predicts ``eps``, ``x0`` or ``v`` (:class:`~diffusionkit.Prediction`); solvers want
``eps_hat`` and ``x0_hat`` at ``(x_t, t)``, consistent with each other
(``x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps_hat``, Ho et al. 2020, eq. 4) and with the
model's :mod:`~diffusionkit.thresholding` applied. :class:`DenoiserView` is that adapter,
the one narrow contract between models and solvers (the role of k-diffusion's
``DiscreteEpsDDPMDenoiser`` wrappers): network (with its condition bound and guidance applied,
see :mod:`diffusionkit.guidance`) + schedule + prediction type + x0 processing.

Solvers never call a network themselves; they receive :class:`Denoised` values, which compute
``eps_hat`` and ``x0_hat`` on first use only (each costs passes over the batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffusionkit.prediction import Prediction, eps_from_x0, predicted_eps, predicted_x0
from diffusionkit.schedules import NoiseSchedule
from diffusionkit.thresholding import X0Processing
from diffusionkit.variance import split_learned_variance

__all__ = ["Denoised", "DenoiserView", "NetCall", "check_output", "network_call"]

#: ``call(x, t) -> out``: the network with its condition bound (and guidance applied), for
#: ``x`` ``(B, C, H, W)`` and ``t`` ``(B,)`` int64; ``out`` is shaped like ``x`` (``(B, 2 C, H,
#: W)`` for a network that learns its variance, see :mod:`diffusionkit.variance`)
NetCall = Callable[[Tensor, Tensor], Tensor]


class Denoised:
    """The model's estimates at one network call, computed when first read.

    Attributes:
        x: ``(B, C, H, W)``, the state the network saw. Inpainting may have replaced part of
            the solver's state before the call, so a solver continues from ``x``.
        alpha_cumprod: ``abar`` of the call's timestep (a Python float).
        variance: ``(B, C, H, W)``, the network's variance output ``v`` in ``[-1, 1]`` when it
            learns its variance (:func:`~diffusionkit.variance.step_log_variance` turns it into
            the step's log variance), else ``None``.
    """

    __slots__ = (
        "_a",
        "_b",
        "_eps",
        "_kind",
        "_out",
        "_processing",
        "_x0",
        "alpha_cumprod",
        "variance",
        "x",
    )

    def __init__(
        self,
        x: Tensor,
        out: Tensor,
        alpha_cumprod: float,
        kind: Prediction,
        processing: X0Processing | None,
        variance: Tensor | None = None,
    ) -> None:
        self.x = x
        self.alpha_cumprod = alpha_cumprod
        self.variance = variance
        self._out = out
        self._a, self._b = alpha_cumprod**0.5, (1.0 - alpha_cumprod) ** 0.5
        self._kind = kind
        self._processing = processing
        self._eps: Tensor | None = None
        self._x0: Tensor | None = None

    @property
    def x0(self) -> Tensor:
        """``x0_hat`` ``(B, C, H, W)``, processed as the model says (e.g. clipped)."""
        if self._x0 is None:
            x0 = predicted_x0(self._out, self.x, self._a, self._b, self._kind)
            self._x0 = x0 if self._processing is None else self._processing(x0)
        return self._x0

    @property
    def eps(self) -> Tensor:
        """``eps_hat`` ``(B, C, H, W)``, consistent with :attr:`x0`."""
        if self._eps is None:
            if self._processing is None:
                self._eps = predicted_eps(self._out, self.x, self._a, self._b, self._kind)
            else:  # re-derived from the processed x0_hat, so the pair stays on eq. 4
                self._eps = eps_from_x0(self.x, self.x0, self._a, self._b)
        return self._eps


class DenoiserView:
    """A model seen as a denoiser: ``eps_hat`` and ``x0_hat`` at ``(x_t, t)``.

    Args:
        call: the network call ``(x, t) -> out`` (condition bound, guidance applied).
        schedule: the schedule the network was trained with (gives ``abar_t`` per ``t``).
        prediction: what ``out`` is.
        x0_processing: applied to ``x0_hat`` before anything reads it; ``None``: none.
        learned_variance: ``out`` has ``2 C`` channels, the prediction then the variance value
            ``v`` (Nichol & Dhariwal 2021; :mod:`diffusionkit.variance`).
    """

    def __init__(
        self,
        call: NetCall,
        schedule: NoiseSchedule,
        prediction: Prediction,
        x0_processing: X0Processing | None = None,
        learned_variance: bool = False,
    ) -> None:
        self.call = call
        self.schedule = schedule
        self.prediction = Prediction(prediction)
        self.x0_processing = x0_processing
        self.learned_variance = learned_variance

    def _split(self, out: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if not self.learned_variance:
            return out, None
        return split_learned_variance(out, x.shape[1])

    def at(self, x: Tensor, t: Tensor, alpha_cumprod: float) -> Denoised:
        """One network call in a reverse chain.

        Args:
            x: ``(B, C, H, W)`` noisy images.
            t: ``(B,)`` int64 model timesteps (all the same in a chain).
            alpha_cumprod: ``abar`` at ``t``, as a Python float (no device sync).
        """
        out, v = self._split(self.call(x, t), x)
        return Denoised(x, out, alpha_cumprod, self.prediction, self.x0_processing, v)

    def predict(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(eps_hat, x0_hat)`` for per-sample timesteps ``t`` ``(B,)``, each ``(B, C, H, W)``."""
        out, _ = self._split(self.call(x, t), x)
        shape = (-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)
        a = self.schedule.sqrt_alphas_cumprod.to(device=x.device, dtype=x.dtype)[t].view(shape)
        b = self.schedule.sqrt_one_minus_alphas_cumprod.to(x.device, x.dtype)[t].view(shape)
        if self.x0_processing is None:
            eps = predicted_eps(out, x, a, b, self.prediction)
            return eps, predicted_x0(out, x, a, b, self.prediction)
        x0 = self.x0_processing(predicted_x0(out, x, a, b, self.prediction))
        return (x - a * x0) / b, x0


def check_output(out: object, x: Tensor, learned_variance: bool = False) -> Tensor:
    """``out`` if it is a tensor shaped like the network's input ``x`` (with twice its channels
    when the network learns its variance); else a clear error."""
    expected = tuple(x.shape)
    if learned_variance:
        expected = (expected[0], 2 * expected[1], *expected[2:])
    if not isinstance(out, Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        if learned_variance:
            raise ValueError(
                f"a model with learned_variance=True needs a net that returns twice its input's "
                f"channels, {expected} for input {tuple(x.shape)} (the prediction, then the "
                f"variance value); got {got}: build it with out_channels = 2 * in_channels"
            )
        hint = ""
        if isinstance(out, Tensor) and out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
            hint = (
                ": a net with out_channels = 2 * in_channels learns its variance; build the "
                "model with DenoiseDiffusion(..., learned_variance=True)"
            )
        raise ValueError(
            f"net must return a tensor shaped like its input {tuple(x.shape)}; got {got}{hint}"
        )
    return out


def network_call(
    net: torch.nn.Module, learned_variance: bool = False
) -> Callable[[Tensor, Tensor, Tensor | None, Tensor | None], Tensor]:
    """``net_fn(x, t, labels, cond) -> out``: ``net`` called with only the conditioning inputs
    it is given, its output checked (the form :func:`~diffusionkit.guidance.guided` binds).
    With ``learned_variance`` the output has ``2 C`` channels."""

    def net_fn(x: Tensor, t: Tensor, labels: Tensor | None, cond: Tensor | None) -> Tensor:
        kwargs: dict[str, Tensor] = {}
        if labels is not None:
            kwargs["labels"] = labels
        if cond is not None:
            kwargs["cond"] = cond
        return check_output(net(x, t, **kwargs), x, learned_variance)

    return net_fn
