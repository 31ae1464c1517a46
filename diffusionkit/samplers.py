"""Samplers: one reverse step ``x_t -> x_{t-1}`` given the network's prediction.

A sampler holds no mutable state: everything a step needs comes in its arguments, and all
randomness comes from the optional ``generator``. The owning
:class:`~diffusionkit.DenoiseDiffusion` turns the network output into both ``eps_hat`` and
``x0_hat`` whatever the prediction type, so every sampler works with every parameterization.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

from torch import Tensor

from diffusionkit._random import Generators, randn
from diffusionkit.registry import Registry
from diffusionkit.schedules import StepCoefficients

__all__ = ["SAMPLERS", "DDPMSampler", "PosteriorMeanSampler", "Sampler", "Variance"]


class Sampler(ABC):
    """Abstract reverse step.

    Subclasses implement :meth:`step` and :meth:`config` and keep no state between calls.
    """

    #: short name used in configs and on the command line (e.g. ``"ddpm"``)
    name: str = ""

    @abstractmethod
    def step(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        """Return ``x_{t-1}`` ``(B, C, H, W)``.

        Args:
            x_t: current noisy images ``(B, C, H, W)``.
            eps: predicted noise ``eps_hat(x_t, t)``, same shape.
            x0: predicted clean images ``x0_hat(x_t, t)``, same shape (consistent with ``eps``).
            coef: the schedule's scalars at this step (``coef.index == 0`` is the last step).
            generator: source of the step's noise (one, or one per sample).
        """

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The constructor arguments, such that ``type(self)(**self.config())`` is equal."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Sampler)
        return self.config() == other.config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, repr(self.config())))


class Variance(str, Enum):
    """Reverse-process variance ``sigma_t²`` of :class:`DDPMSampler` (Ho et al. 2020, Sec. 3.2)."""

    POSTERIOR = "posterior"  #: ``beta_tilde_t``, optimal for deterministic ``x_0``
    BETA = "beta"  #: ``beta_t``, optimal for ``x_0 ~ N(0, I)``


def _noise_like(x: Tensor, generator: Generators) -> Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def _eps_from_x0(x_t: Tensor, x0: Tensor, coef: StepCoefficients) -> Tensor:
    # invert x_t = sqrt(abar) x0 + sqrt(1 - abar) eps  (Ho et al. 2020, eq. 4)
    return (x_t - coef.alpha_cumprod**0.5 * x0) / (1.0 - coef.alpha_cumprod) ** 0.5


class DDPMSampler(Sampler):
    """Ancestral sampling, Ho et al. 2020, Algorithm 2.

    ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t) + sigma_t z``, with
    ``z ~ N(0, I)`` except at the last step (``t = 0``), where no noise is added.

    Args:
        variance: ``"posterior"`` (``sigma_t² = beta_tilde_t``) or ``"beta"`` (``= beta_t``).
        clip_x0: clip ``x0_hat`` to ``[-1, 1]`` and re-derive ``eps_hat`` from it first.
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
        x0: Tensor,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        if self.clip_x0:
            eps = _eps_from_x0(x_t, x0.clamp(-1.0, 1.0), coef)
        scale = coef.beta / (1.0 - coef.alpha_cumprod) ** 0.5
        mean = (x_t - scale * eps) / coef.alpha**0.5
        if coef.index == 0:
            return mean
        var = coef.posterior_variance if self.variance is Variance.POSTERIOR else coef.beta
        return mean + var**0.5 * _noise_like(x_t, generator)

    def config(self) -> dict[str, Any]:
        return {"variance": self.variance.value, "clip_x0": self.clip_x0}


class PosteriorMeanSampler(Sampler):
    """Step to the posterior ``q(x_{t-1} | x_t, x0_hat)`` (Ho et al. 2020, eq. 6-7).

    ``mu_tilde = c0_t x0_hat + ct_t x_t`` with ``c0_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t)``
    and ``ct_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)``; then
    ``x_{t-1} = mu_tilde + sqrt(beta_tilde_t) z``.

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
        x0: Tensor,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean = coef.posterior_mean_coef_x0 * x0 + coef.posterior_mean_coef_xt * x_t
        if not self.stochastic or coef.index == 0:
            return mean
        return mean + coef.posterior_variance**0.5 * _noise_like(x_t, generator)

    def config(self) -> dict[str, Any]:
        return {"clip_x0": self.clip_x0, "stochastic": self.stochastic}


#: samplers by class name and short name (``"ddpm"``, ``"posterior-mean"``), for configs and
#: the command line; register your own ``Sampler`` subclass with ``SAMPLERS.register(cls, "name")``
SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register(DDPMSampler, DDPMSampler.name)
SAMPLERS.register(PosteriorMeanSampler, PosteriorMeanSampler.name)
