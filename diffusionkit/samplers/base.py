"""The sampler contract: a sampler owns the reverse loop over a :class:`~diffusionkit.chain.Chain`.

A :class:`Sampler` is a solver of the reverse process: given the state at the plan's first
timestep, it returns the chain's result, calling the model through the chain as often as it
needs (several calls per step for Heun, one per step with a history of earlier ones for the
multistep DPM-Solver++ and UniPC). It holds no state between runs: whatever it remembers lives in
local variables of :meth:`Sampler.sample`, and all randomness comes from the chain's
generator(s).

Memoryless one-step samplers (DDPM, DDIM, the posterior mean, Euler) need not write the loop:
they implement :meth:`Sampler.step`, ``x_t -> x_{t-1}`` from the model's ``eps_hat`` and
``x0_hat``, and the default :meth:`Sampler.sample` drives it. Only such samplers can redo a step
(RePaint's resampling), since a step depends on nothing but its input.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from diffusionkit._random import Generators
from diffusionkit.chain import Chain
from diffusionkit.configurable import Component
from diffusionkit.schedules import StepCoefficients
from diffusionkit.variance import step_log_variance

__all__ = ["Sampler", "required_x0"]


def required_x0(x0: Tensor | None, sampler: object) -> Tensor:
    """``x0``, which a step whose :meth:`Sampler.uses_x0` is true must have been given."""
    if x0 is None:
        raise TypeError(
            f"{type(sampler).__name__}: this step reads x0_hat (uses_x0 is True): pass it"
        )
    return x0


class Sampler(Component):
    """A reverse-process solver (see the module docstring).

    Subclass it and override :meth:`sample` for a solver that owns its loop, or :meth:`step`
    (and, to save work, :meth:`uses_x0`) for a memoryless one-step sampler. The constructor
    arguments are recorded as ``config()``, which checkpoints save.
    """

    #: short name used in configs and on the command line (e.g. ``"ddpm"``)
    name: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Sampler:
        if cls.sample is Sampler.sample and cls.step is Sampler.step:
            raise TypeError(
                f"Can't instantiate {cls.__name__}: a sampler implements sample() (a solver "
                "that owns its loop) or step() (a memoryless one-step sampler)"
            )
        return super().__new__(cls)

    # ---------------------------------------------------------------- budget
    def steps_for_calls(self, calls: int, clean_end: bool) -> int:
        """How many steps (timesteps of the plan) ``calls`` network calls buy.

        One per call by default; a solver with more calls per step (Heun) overrides this and
        :meth:`calls_for_steps`.

        Args:
            calls: the network calls asked for (``reverse_sample(steps=...)``).
            clean_end: whether the chain ends at the clean image (a solver's last step to the
                clean image may need fewer calls).
        """
        return calls

    def calls_for_steps(self, steps: int, clean_end: bool) -> int:
        """How many network calls a chain of ``steps`` steps makes (the inverse of
        :meth:`steps_for_calls`, used when every timestep is visited)."""
        return steps

    @property
    def can_resample(self) -> bool:
        """Whether a step can be redone (RePaint resampling): memoryless one-step samplers."""
        return type(self).sample is Sampler.sample

    # ------------------------------------------------------------------ loop
    def sample(self, x: Tensor, chain: Chain) -> Tensor:
        """Run the reverse chain from ``x`` ``(B, C, H, W)`` and return its result.

        The default drives :meth:`step` once per timestep of the plan (Ho et al. 2020,
        Algorithm 2's loop), redoing a step after a jump back where RePaint asks for it.
        """
        processed = chain.view.x0_processing is not None
        for k, i in enumerate(chain.indices):
            coef = chain.coefficients(i)
            # x0_hat costs passes over the batch: computed where the step reads it, or where
            # the model processes it (then eps_hat is derived from it anyway)
            pass_x0 = processed or self.uses_x0(coef)
            for repeat in range(chain.resample_jumps(i) + 1):
                if repeat:  # RePaint's jump back from t-1 to t (Lugmayr et al. 2022, Alg. 1)
                    x = chain.jump_back(x, i)
                denoised = chain.denoise(x, i)
                x0 = denoised.x0 if pass_x0 else None
                if denoised.variance is not None and coef.index and self.takes_learned_variance:
                    log_variance = step_log_variance(denoised.variance, coef)
                    x = self.step_with_variance(
                        denoised.x, denoised.eps, x0, log_variance, coef, chain.generator
                    )
                else:
                    x = self.step(denoised.x, denoised.eps, x0, coef, chain.generator)
            x = chain.step_done(k, i, x, denoised)
        return x

    def step(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        """Return ``x_{t-1}`` ``(B, C, H, W)`` (one-step samplers; see the module docstring).

        Args:
            x_t: current noisy images ``(B, C, H, W)``.
            eps: predicted noise ``eps_hat(x_t, t)``, same shape.
            x0: predicted clean images ``x0_hat(x_t, t)``, same shape (consistent with
                ``eps``); ``None`` only where :meth:`uses_x0` returned ``False`` for ``coef``.
            coef: the schedule's scalars at this step (``coef.index == 0`` is the last step of
                a chain that ends clean; it steps to ``abar = coef.alpha_cumprod_prev``).
            generator: source of the step's noise (one, or one per sample).
        """
        raise NotImplementedError(
            f"{type(self).__name__} implements neither sample() (a solver that owns its loop) "
            "nor step() (a one-step sampler)"
        )

    @property
    def takes_learned_variance(self) -> bool:
        """Whether the sampler draws its noise with a model's learned variance
        (:mod:`diffusionkit.variance`): it implements :meth:`step_with_variance`, which the
        default loop then calls at every step but the last. Samplers whose variance is part of
        their definition (DDIM's ``eta``, the ODE and SDE solvers) use the prediction alone."""
        return type(self).step_with_variance is not Sampler.step_with_variance

    def step_with_variance(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        log_variance: Tensor,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        """:meth:`step` with the model's learned ``log sigma_t²`` ``(B, C, H, W)`` as the
        variance of the step's noise (Nichol & Dhariwal 2021, eq. 15); ``coef.index > 0``."""
        raise NotImplementedError(f"{type(self).__name__} has no variance to learn")

    def uses_x0(self, coef: StepCoefficients) -> bool:
        """Whether :meth:`step` reads ``x0`` at ``coef``. Where it does not, the default loop
        may pass ``None`` instead of computing it. ``True`` unless a subclass knows better."""
        return True
