"""Learned reverse-process variances (Nichol & Dhariwal 2021, Sec. 3.1).

Ho et al. (2020) fix the variance of ``p(x_{t-1} | x_t)`` at ``beta_t`` or at the posterior's
``beta_tilde_t``, the two ends of the range any reasonable variance lies in. Improved DDPM lets
the network choose within that range, per pixel, in log space (eq. 15):

    ``Sigma_theta(x_t, t) = exp(frac log beta_t + (1 - frac) log beta_tilde_t)``,

where the network outputs ``v`` in ``[-1, 1]`` and ``frac = (v + 1) / 2`` (improved-diffusion's
and diffusers' ``learned_range``). Such a network has ``2 C`` output channels: the first ``C``
are its usual prediction (eps, x0 or v), the last ``C`` are ``v``.

On a respaced schedule the range is that of the respaced betas (improved-diffusion recomputes
``beta_t`` and ``beta_tilde_t`` for the kept timesteps): the step's
:class:`~diffusionkit.schedules.StepCoefficients` already hold them.
"""

from __future__ import annotations

import math

from torch import Tensor

from diffusionkit.schedules import StepCoefficients

__all__ = ["learned_log_variance", "split_learned_variance", "step_log_variance"]


def split_learned_variance(out: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """``(prediction, v)`` from a learned-variance network's output.

    Args:
        out: ``(B, 2 C, H, W)``, the network's output.
        channels: ``C``, the image channels.

    Returns:
        The prediction ``(B, C, H, W)`` and the variance value ``v`` ``(B, C, H, W)``.
    """
    return out[:, :channels], out[:, channels:]


def learned_log_variance(
    v: Tensor, log_beta: Tensor | float, log_beta_tilde: Tensor | float
) -> Tensor:
    """``log Sigma = frac log beta + (1 - frac) log beta_tilde`` with ``frac = (v + 1) / 2``
    (Nichol & Dhariwal 2021, eq. 15).

    Args:
        v: ``(B, C, H, W)``, the network's variance output, in ``[-1, 1]`` for a variance in
            the range (values outside extrapolate, as in improved-diffusion).
        log_beta: ``log beta_t``, a float or a tensor broadcastable to ``v``.
        log_beta_tilde: ``log beta_tilde_t`` (clipped at ``t = 0``), likewise.

    Returns:
        ``(B, C, H, W)`` log variances, in ``v``'s dtype.
    """
    frac = (v + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_beta_tilde


def step_log_variance(v: Tensor, coef: StepCoefficients) -> Tensor:
    """The learned log variance ``(B, C, H, W)`` of the reverse step ``coef`` (its own, possibly
    respaced, ``beta_t`` and clipped ``beta_tilde_t``)."""
    return learned_log_variance(v, math.log(coef.beta), coef.posterior_log_variance_clipped)
