"""Samplers: one reverse step ``x_t -> x_{t-1}`` given the network's prediction.

A sampler holds no mutable state: everything a step needs comes in its arguments, and all
randomness comes from the optional ``generator``. The owning
:class:`~diffusionkit.DenoiseDiffusion` turns the network output into both ``eps_hat`` and
``x0_hat`` whatever the prediction type, so every sampler works with every parameterization;
a sampler that does not read ``x0_hat`` at a step says so in :meth:`Sampler.uses_x0`, and the
loop then skips computing it (two passes over the batch per step, measured in
docs/performance.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from diffusionkit._random import Generators, randn
from diffusionkit.registry import Registry
from diffusionkit.schedules import StepCoefficients

__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "PosteriorMeanSampler",
    "Sampler",
    "Variance",
    "get_sampler",
]


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
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        """Return ``x_{t-1}`` ``(B, C, H, W)``.

        Args:
            x_t: current noisy images ``(B, C, H, W)``.
            eps: predicted noise ``eps_hat(x_t, t)``, same shape.
            x0: predicted clean images ``x0_hat(x_t, t)``, same shape (consistent with ``eps``);
                ``None`` only where :meth:`uses_x0` returned ``False`` for ``coef``.
            coef: the schedule's scalars at this step (``coef.index == 0`` is the last step).
            generator: source of the step's noise (one, or one per sample).
        """

    def uses_x0(self, coef: StepCoefficients) -> bool:
        """Whether :meth:`step` reads ``x0`` at ``coef``. Where it does not, the sampling loop
        may pass ``None`` instead of computing it. ``True`` unless a subclass knows better."""
        return True

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


def _add_noise(mean: Tensor, std: float, x_t: Tensor, generator: Generators) -> Tensor:
    """``mean + std z`` with ``z ~ N(0, I)``, accumulated into ``mean`` (a fresh tensor)."""
    return mean.add_(_noise_like(x_t, generator), alpha=std)


def _given(x0: Tensor | None) -> Tensor:
    """``x0``, which a sampler whose :meth:`Sampler.uses_x0` is true must have been given."""
    if x0 is None:
        raise TypeError("this step reads x0_hat: pass it (uses_x0 is True here)")
    return x0


def _eps_from_x0(x_t: Tensor, x0: Tensor, coef: StepCoefficients) -> Tensor:
    # invert x_t = sqrt(abar) x0 + sqrt(1 - abar) eps  (Ho et al. 2020, eq. 4)
    return (x_t - coef.alpha_cumprod**0.5 * x0) / (1.0 - coef.alpha_cumprod) ** 0.5


class DDPMSampler(Sampler):
    """Ancestral sampling, Ho et al. 2020, Algorithm 2.

    ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t) + sigma_t z``, with
    ``z ~ N(0, I)`` except at the last step (``t = 0``), where no noise is added. Where
    ``alpha_t = 0`` (the first step of a zero-terminal-SNR schedule) that form divides by zero,
    and the step uses the equal posterior-mean form ``mu_tilde = c0_t x0_hat`` (eq. 7) instead.

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
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        if self.uses_x0(coef):
            # eq. 7's form: with a clipped x0_hat, or where alpha_t = 0 (beta_t = 1: x_t holds
            # no signal and eq. 11's form below divides by zero)
            x0 = _given(x0)
            if self.clip_x0:
                x0 = x0.clamp(-1.0, 1.0)
            mean = torch.mul(x_t, coef.posterior_mean_coef_xt)
            mean.add_(x0, alpha=coef.posterior_mean_coef_x0)
        else:  # eq. 11: (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t), two fused ops
            scale = coef.beta / (1.0 - coef.alpha_cumprod) ** 0.5
            mean = torch.add(x_t, eps, alpha=-scale).div_(coef.alpha**0.5)
        if coef.index == 0:
            return mean
        var = coef.posterior_variance if self.variance is Variance.POSTERIOR else coef.beta
        return _add_noise(mean, var**0.5, x_t, generator)

    def uses_x0(self, coef: StepCoefficients) -> bool:
        """Only with ``clip_x0`` or where ``alpha_t = 0``: eq. 11 needs ``eps_hat`` alone."""
        return self.clip_x0 or coef.alpha == 0.0

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
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        x0 = _given(x0)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean = torch.mul(x_t, coef.posterior_mean_coef_xt)
        mean.add_(x0, alpha=coef.posterior_mean_coef_x0)
        if not self.stochastic or coef.index == 0:
            return mean
        return _add_noise(mean, coef.posterior_variance**0.5, x_t, generator)

    def config(self) -> dict[str, Any]:
        return {"clip_x0": self.clip_x0, "stochastic": self.stochastic}


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
        x0 = _given(x0)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = _eps_from_x0(x_t, x0, coef)
        # sigma_t² = eta² (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev)  (eq. 16)
        var = self.eta**2 * coef.posterior_variance
        direction = max(1.0 - coef.alpha_cumprod_prev - var, 0.0) ** 0.5
        x = torch.mul(x0, coef.alpha_cumprod_prev**0.5).add_(eps, alpha=direction)  # eq. 12
        if var > 0.0:
            x = _add_noise(x, var**0.5, x_t, generator)
        return x

    def config(self) -> dict[str, Any]:
        return {"eta": self.eta, "clip_x0": self.clip_x0}


#: samplers by class name and short name (``"ddpm"``, ``"posterior-mean"``, ``"ddim"``), for
#: configs and the command line; register your own ``Sampler`` subclass with
#: ``SAMPLERS.register(cls, "name")``
SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register(DDPMSampler, DDPMSampler.name)
SAMPLERS.register(PosteriorMeanSampler, PosteriorMeanSampler.name)
SAMPLERS.register(DDIMSampler, DDIMSampler.name)


def get_sampler(sampler: Sampler | str | type[Sampler], **kwargs: Any) -> Sampler:
    """Resolve a sampler given as an object, a registered name or a class.

    Objects are the primary API; names are for configs and the command line.

    Args:
        sampler: a :class:`Sampler` (returned as is); a name registered in :data:`SAMPLERS`
            (``"ddpm"``, ``"posterior-mean"``, ``"ddim"``, a class name such as
            ``"DDIMSampler"``, or any name you registered); or a ``Sampler`` subclass.
        **kwargs: constructor arguments, when ``sampler`` is a name or a class.

    Returns:
        The sampler object.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or invalid arguments.
        TypeError: ``sampler`` is none of the above, or keyword arguments come with an object.

    Example:
        >>> get_sampler("ddim", eta=0.5)
        DDIMSampler(eta=0.5, clip_x0=False)
    """
    if isinstance(sampler, Sampler):
        if kwargs:
            raise TypeError(
                "keyword arguments apply only when sampler is a name or a class; got the "
                f"object {sampler!r} and {sorted(kwargs)}"
            )
        return sampler
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            valid = ", ".join(repr(n) for n in SAMPLERS.names())
            raise ValueError(f"unknown sampler {sampler!r}; valid names: {valid}")
        cls: type[Any] = SAMPLERS.get(sampler)
    elif isinstance(sampler, type) and issubclass(sampler, Sampler):
        cls = sampler
    else:
        raise TypeError(
            "sampler must be a Sampler, a registered sampler name or a Sampler subclass; got "
            f"{type(sampler).__name__}"
        )
    try:
        built = cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"invalid arguments for sampler {cls.__name__}: {err}") from None
    if not isinstance(built, Sampler):
        raise TypeError(f"{cls.__name__} is registered as a sampler but is not a Sampler")
    return built
