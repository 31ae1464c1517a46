"""One-step samplers of the DDPM family: ancestral sampling, the posterior mean, and DDIM.

Each is memoryless: a step ``x_t -> x_{t-1}`` from the model's ``eps_hat`` and ``x0_hat``,
driven by :meth:`Sampler.sample`'s default loop. A sampler that does not read ``x0_hat`` at a
step says so in :meth:`Sampler.uses_x0`, and the loop then skips computing it (two passes over
the batch per step, measured in docs/performance.md).

``clip_x0`` predates the model's own :mod:`~diffusionkit.thresholding`
(``DenoiseDiffusion(x0_processing=ClipX0())``), which every solver respects; it is kept so
that samplers built and saved with it behave as before, and clamps ``x0_hat`` once more
(a no-op after the model's processing).
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from diffusionkit._random import Generators, randn
from diffusionkit.prediction import eps_from_x0
from diffusionkit.samplers.base import Sampler, required_x0
from diffusionkit.schedules import StepCoefficients

__all__ = ["DDIMSampler", "DDPMSampler", "PosteriorMeanSampler", "Variance"]


class Variance(str, Enum):
    """Reverse-process variance ``sigma_t²`` of :class:`DDPMSampler` (Ho et al. 2020, Sec. 3.2)."""

    POSTERIOR = "posterior"  #: ``beta_tilde_t``, optimal for deterministic ``x_0``
    BETA = "beta"  #: ``beta_t``, optimal for ``x_0 ~ N(0, I)``


def _noise_like(x: Tensor, generator: Generators) -> Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def _add_noise(mean: Tensor, std: float, x_t: Tensor, generator: Generators) -> Tensor:
    """``mean + std z`` with ``z ~ N(0, I)``, accumulated into ``mean`` (a fresh tensor)."""
    return mean.add_(_noise_like(x_t, generator), alpha=std)


def _add_learned_noise(
    mean: Tensor, log_variance: Tensor, x_t: Tensor, generator: Generators
) -> Tensor:
    """``mean + exp(log_variance / 2) z``: the noise of a learned variance (``(B, C, H, W)``,
    Nichol & Dhariwal 2021, eq. 15), accumulated into ``mean`` (a fresh tensor)."""
    return mean.addcmul_(_noise_like(x_t, generator), log_variance.mul(0.5).exp_())


class DDPMSampler(Sampler):
    """Ancestral sampling, Ho et al. 2020, Algorithm 2.

    ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t) + sigma_t z``, with
    ``z ~ N(0, I)`` except at the last step (``t = 0``), where no noise is added. The step uses
    the equal posterior-mean form ``mu_tilde = c0_t x0_hat + ct_t x_t`` (eq. 7) instead when it
    is given ``x0_hat``: where ``alpha_t = 0`` (the first step of a zero-terminal-SNR schedule,
    where eq. 11 divides by zero), with ``clip_x0``, and when the model processes ``x0_hat``
    (its ``x0_processing``), since the processed ``x0_hat`` is then what the step is built from.

    A model that learns its variance (``DenoiseDiffusion(learned_variance=True)``) draws the
    noise with its own ``sigma_t²`` instead (Nichol & Dhariwal 2021, eq. 15), so ``variance``
    then does not apply.

    Args:
        variance: ``"posterior"`` (``sigma_t² = beta_tilde_t``) or ``"beta"`` (``= beta_t``).
        clip_x0: clip ``x0_hat`` to ``[-1, 1]`` first.
    """

    name = "ddpm"

    def __init__(self, variance: Variance | str = Variance.POSTERIOR, clip_x0: bool = False):
        try:
            self.variance = Variance(variance)
        except ValueError:
            valid = ", ".join(repr(v.value) for v in Variance)
            raise ValueError(f"variance must be one of {valid}; got {variance!r}") from None
        self.clip_x0 = bool(clip_x0)

    def step(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        mean = self._mean(x_t, eps, x0, coef)
        if coef.index == 0:
            return mean
        var = coef.posterior_variance if self.variance is Variance.POSTERIOR else coef.beta
        return _add_noise(mean, var**0.5, x_t, generator)

    def step_with_variance(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        log_variance: Tensor,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        return _add_learned_noise(self._mean(x_t, eps, x0, coef), log_variance, x_t, generator)

    def _mean(self, x_t: Tensor, eps: Tensor, x0: Tensor | None, coef: StepCoefficients) -> Tensor:
        """``mu_theta(x_t, t)`` ``(B, C, H, W)``, a fresh tensor."""
        if x0 is not None or self.uses_x0(coef):
            # eq. 7's form: from a clipped or processed x0_hat, or where alpha_t = 0 (beta_t = 1:
            # x_t holds no signal and eq. 11's form below divides by zero)
            x0 = required_x0(x0, self)
            if self.clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            mean = torch.mul(x_t, coef.posterior_mean_coef_xt)
            return mean.add_(x0, alpha=coef.posterior_mean_coef_x0)
        # eq. 11: (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t), two fused ops
        scale = coef.beta / (1.0 - coef.alpha_cumprod) ** 0.5
        return torch.add(x_t, eps, alpha=-scale).div_(coef.alpha**0.5)

    def uses_x0(self, coef: StepCoefficients) -> bool:
        """Only with ``clip_x0`` or where ``alpha_t = 0``: eq. 11 needs ``eps_hat`` alone (the
        loop also passes ``x0_hat`` when the model processes it)."""
        return self.clip_x0 or coef.alpha == 0.0


class PosteriorMeanSampler(Sampler):
    """Step to the posterior ``q(x_{t-1} | x_t, x0_hat)`` (Ho et al. 2020, eq. 6-7).

    ``mu_tilde = c0_t x0_hat + ct_t x_t`` with ``c0_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t)``
    and ``ct_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)``; then
    ``x_{t-1} = mu_tilde + sqrt(beta_tilde_t) z``.

    A model that learns its variance draws the noise with its own ``sigma_t²`` instead of
    ``beta_tilde_t`` (Nichol & Dhariwal 2021, eq. 15).

    Args:
        clip_x0: clip ``x0_hat`` to ``[-1, 1]`` before forming the mean (keeps samples in range).
        stochastic: add the posterior noise; ``False`` returns the posterior mean itself.
    """

    name = "posterior-mean"

    def __init__(self, clip_x0: bool = True, stochastic: bool = True) -> None:
        self.clip_x0 = bool(clip_x0)
        self.stochastic = bool(stochastic)

    def step(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        mean = self._mean(x0, coef, x_t)
        if not self.stochastic or coef.index == 0:
            return mean
        return _add_noise(mean, coef.posterior_variance**0.5, x_t, generator)

    def step_with_variance(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        log_variance: Tensor,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        mean = self._mean(x0, coef, x_t)
        if not self.stochastic:
            return mean
        return _add_learned_noise(mean, log_variance, x_t, generator)

    def _mean(self, x0: Tensor | None, coef: StepCoefficients, x_t: Tensor) -> Tensor:
        """``mu_tilde_t(x_t, x0_hat)`` ``(B, C, H, W)`` (eq. 7), a fresh tensor."""
        x0 = required_x0(x0, self)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean = torch.mul(x_t, coef.posterior_mean_coef_xt)
        return mean.add_(x0, alpha=coef.posterior_mean_coef_x0)


class DDIMSampler(Sampler):
    """Denoising diffusion implicit models, Song et al. 2021, eq. 12 with eq. 16.

    ``x_{t-1} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t²) eps_hat + sigma_t z``
    with ``sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``,
    i.e. ``sigma_t² = eta² beta_tilde_t``. Here ``abar_prev`` is ``abar`` of the previous *kept*
    timestep, so with ``reverse_sample(steps=S)`` the sampler jumps straight between the kept
    timesteps of the respaced schedule (``coef.alpha_cumprod_prev``; ``1`` after the last step).

    ``eta = 0`` is deterministic (the same ``x_T`` always gives the same sample, and no noise is
    drawn); ``eta = 1`` has the DDPM posterior variance, and its step then equals
    :class:`PosteriorMeanSampler` (without clipping) exactly.

    Args:
        eta: noise scale in ``[0, 1]``.
        clip_x0: clip ``x0_hat`` to ``[-1, 1]`` and re-derive ``eps_hat`` from the clipped value
            before the update (improved-diffusion's ``ddim_sample``; diffusers'
            ``DDIMScheduler(clip_sample=True)`` with ``step(..., use_clipped_model_output=True)``).
            Off by default, like :class:`DDPMSampler`: clipping bends the deterministic path
            away from the probability-flow ODE and only matters when a model's ``x0_hat``
            leaves the data range. diffusers' default (``clip_sample=True`` without
            ``use_clipped_model_output``) clips ``x0_hat`` but keeps the raw ``eps_hat``; that
            mixture is not offered.
    """

    name = "ddim"

    def __init__(self, eta: float = 0.0, clip_x0: bool = False) -> None:
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
        self.eta = float(eta)
        self.clip_x0 = bool(clip_x0)

    def step(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        x0 = required_x0(x0, self)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = eps_from_x0(x_t, x0, coef.alpha_cumprod**0.5, (1.0 - coef.alpha_cumprod) ** 0.5)
        # sigma_t² = eta² (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)  (eq. 16)
        var = self.eta**2 * coef.posterior_variance
        direction = max(1.0 - coef.alpha_cumprod_prev - var, 0.0) ** 0.5
        x = torch.mul(x0, coef.alpha_cumprod_prev**0.5).add_(eps, alpha=direction)  # eq. 12
        if var > 0.0:
            x = _add_noise(x, var**0.5, x_t, generator)
        return x
