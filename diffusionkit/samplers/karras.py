"""Euler, Euler ancestral and Heun on the probability-flow ODE in Karras et al.'s formulation.

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models", EDM,
arXiv 2206.00364) write every diffusion in the noise level ``sigma`` and the unscaled state
``z``. A VP state ``x = sqrt(abar) x0 + sqrt(1 - abar) eps`` (Ho et al. 2020, eq. 4) is
``x = s z`` with ``s = sqrt(abar) = 1 / sqrt(sigma² + 1)`` (EDM, eq. 4 and Table 1, VP column):

    ``z = x / sqrt(abar) = x0 + sigma eps``,   ``sigma = sqrt((1 - abar) / abar)``.

The probability-flow ODE is then (EDM, eq. 1 and 3 with ``sigma(t) = t``, ``s = 1``; Song et
al. 2021, DDIM, eq. 14)

    ``dz / dsigma = (z - D(z; sigma)) / sigma = eps_hat``,

where ``D = x0_hat`` is the denoiser: the ODE's slope is the predicted noise. The solvers here
step this ODE (k-diffusion's ``sample_euler``, ``sample_euler_ancestral`` and ``sample_heun``)
while the chain's state stays VP. A step goes from ``abar`` to ``abar'``
(``coef.alpha_cumprod`` to ``coef.alpha_cumprod_prev``; ``abar' = 1`` after the last step of
a chain that ends clean), and the Euler step ``z' = z + (sigma' - sigma) eps_hat``, multiplied
by ``sqrt(abar')``, is

    ``x' = sqrt(abar') (x0_hat + sigma eps_hat) + sqrt(abar') (sigma' - sigma) eps_hat
         = sqrt(abar') x0_hat + sqrt(1 - abar') eps_hat``

(DDIM's deterministic update, Song et al. 2021, eq. 12 with ``sigma_t = 0``). Every update here
is written in this VP form, built from ``x0_hat`` and ``eps_hat`` rather than from ``z``,
because it stays finite where ``sigma`` does not: at ``abar = 0`` (a zero-terminal-SNR
schedule's first timestep) ``z`` is infinite while ``x0_hat`` and the step are not. It is also
the better conditioned form in float32: near ``abar = 0`` the equal form
``sqrt(abar' / abar) x + sqrt(abar') (sigma' - sigma) eps_hat`` cancels two terms of size
``sigma`` (``2.0e4`` at the cosine schedule's last timestep). Measured there against a float64
reference, 10 Euler steps: 3e-4 to 6e-4 off in that form, 3e-7 to 4e-7 in this one for ``x0``
and ``v`` networks (5e-5 for ``eps``, whose ``x0_hat`` carries a cancellation of its own).

Timesteps: diffusionkit's networks take integer timesteps, so every solver here visits the
plan's integer timesteps (``reverse_sample(spacing=...)``), each ``sigma`` the schedule's own
at that timestep. ``spacing="karras"`` spaces them by Karras et al.'s eq. 5 (``rho = 7``) and
rounds each noise level to the nearest timestep, where diffusers' ``use_karras_sigmas`` calls
the network at fractional timesteps instead (see :mod:`diffusionkit.spacing`); with
``spacing="trailing"`` both libraries visit the same timesteps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusionkit._random import Generators, randn
from diffusionkit.chain import Chain
from diffusionkit.samplers.base import Sampler, required_x0
from diffusionkit.schedules import StepCoefficients

__all__ = [
    "SOLVERS",
    "EulerAncestralSampler",
    "EulerSampler",
    "HeunSampler",
    "ancestral_variance",
    "second_order_steps",
]


def _euler(x0: Tensor, eps: Tensor, a_next: float, direction: float) -> Tensor:
    """``x' = sqrt(abar') x0_hat + direction eps_hat`` ``(B, C, H, W)``, two fused passes.

    ``direction = sqrt(abar') sigma_down``: ``sqrt(1 - abar')`` for the Euler step,
    ``sqrt(1 - abar' - s²)`` for the ancestral step that then adds noise of variance ``s²``.
    """
    out = torch.mul(x0, math.sqrt(a_next))
    return out.add_(eps, alpha=direction) if direction else out


class EulerSampler(Sampler):
    """Euler's method on the probability-flow ODE in ``sigma`` (Karras et al. 2022, Algorithm 1,
    lines 4-5, without the correction; k-diffusion's ``sample_euler``; diffusers'
    ``EulerDiscreteScheduler``).

    In the unscaled state ``z = x / sqrt(abar)`` a step from ``sigma`` to ``sigma'`` is
    ``z' = z + (sigma' - sigma) (z - x0_hat) / sigma``; for the VP state ``x`` ``(B, C, H, W)``
    (see the module docstring):

        ``x' = sqrt(abar') x0_hat + sqrt(1 - abar') eps_hat``,

    finite at ``abar = 0`` (a zero-terminal-SNR schedule's first step, ``sigma = inf``) and
    ``x0_hat`` itself on the last step to the clean image. One network call per step,
    deterministic, no noise drawn.

    This is :class:`~diffusionkit.DDIMSampler` with ``eta = 0``: Song et al. 2021 (Sec. 4.3,
    eq. 13-14) show that DDIM is the Euler method on this very ODE, and in diffusionkit both
    visit the timesteps the plan gives them. The two names exist because users arrive with
    both: "Euler" is what Karras et al., k-diffusion and diffusers call the sampler, usually
    with Karras sigma spacing (here ``reverse_sample(spacing="karras")``, which is not tied to
    any sampler), and its ``sigma`` parameterization is the one the ancestral and Heun solvers
    here extend. Karras et al.'s stochastic "churn" (Algorithm 2; diffusers' ``s_churn``) is
    not offered: it raises the noise level to ``sigma (1 + gamma)``, between the plan's
    timesteps, where an integer-timestep network cannot be called.

    Memoryless: RePaint resampling works with it.
    """

    name = "euler"

    def __init__(self) -> None:
        """No options (Karras et al.'s deterministic Euler step)."""

    def step(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        a_next = coef.alpha_cumprod_prev
        return _euler(required_x0(x0, self), eps, a_next, math.sqrt(1.0 - a_next))


def ancestral_variance(a: float, a_next: float, eta: float) -> float:
    """``s²``, the variance of the VP noise an ancestral step from ``abar = a`` to
    ``abar' = a_next`` adds: ``abar' sigma_up²`` with k-diffusion's ``get_ancestral_step``

        ``sigma_up = min(sigma', eta sqrt(sigma'² (sigma² - sigma'²) / sigma²))``,

    i.e. ``s² = min(1 - abar', eta² (1 - abar') (abar' - abar) / (abar' (1 - abar)))``, finite
    at ``abar = 0`` and zero at ``abar' = 1``. For ``eta <= 1`` this is ``eta²`` times the DDPM
    posterior variance ``beta_tilde`` between the two timesteps (Ho et al. 2020, eq. 7), DDIM's
    ``sigma_t²`` (Song et al. 2021, eq. 16)."""
    var = eta**2 * (1.0 - a_next) * (a_next - a) / (a_next * (1.0 - a))
    return min(var, 1.0 - a_next)


class EulerAncestralSampler(Sampler):
    """Euler ancestral: an Euler step down to ``sigma_down``, then fresh noise back up to
    ``sigma'`` (k-diffusion's ``sample_euler_ancestral``; diffusers'
    ``EulerAncestralDiscreteScheduler``, which is ``eta = 1``).

    With ``sigma_up² = min(sigma'², eta² sigma'² (sigma² - sigma'²) / sigma²)`` and
    ``sigma_down² = sigma'² - sigma_up²``, the step in ``z = x / sqrt(abar)`` is
    ``z' = z + (sigma_down - sigma) eps_hat + sigma_up n``, ``n ~ N(0, I)``. For the VP state
    ``x`` ``(B, C, H, W)``, with ``s² = abar' sigma_up²`` (:func:`ancestral_variance`):

        ``x' = sqrt(abar') x0_hat + sqrt(1 - abar' - s²) eps_hat + s n``,

    finite at ``abar = 0``; on the last step to the clean image ``s = 0`` and ``x' = x0_hat``.
    ``sigma_up²`` is the variance of the posterior of ``z'`` given ``z`` and ``x0`` (Ho et al.
    2020, eq. 7, in the ``sigma`` variable), so for ``eta <= 1`` the step is
    :class:`~diffusionkit.DDIMSampler` with the same ``eta`` (Song et al. 2021, eq. 12 and 16),
    and ``eta = 1`` is ancestral DDPM sampling between the plan's timesteps. One network call
    per step, and one ``(B, C, H, W)`` noise draw from the chain's generator(s) at every step
    that adds noise (all but the last step of a chain that ends clean), after the call: the
    order in which diffusers draws.

    Args:
        eta: scale of the fresh noise's standard deviation, ``>= 0``. ``0`` is
            :class:`EulerSampler` (no noise drawn); ``1`` (the default, and diffusers' only
            value) the posterior's. Above 1, ``sigma_up`` is capped at ``sigma'`` as in
            k-diffusion (at the cap the step re-noises ``x0_hat`` completely).

    Memoryless: RePaint resampling works with it.
    """

    name = "euler-ancestral"

    def __init__(self, eta: float = 1.0) -> None:
        if (
            isinstance(eta, bool)
            or not isinstance(eta, int | float)
            or not math.isfinite(eta)
            or eta < 0.0
        ):
            raise ValueError(
                "EulerAncestralSampler: eta must be a finite number >= 0 (0: no noise, the Euler "
                f"sampler; 1: the posterior's noise, diffusers' ancestral step); got {eta!r}"
            )
        self.eta = float(eta)

    def step(
        self,
        x_t: Tensor,
        eps: Tensor,
        x0: Tensor | None,
        coef: StepCoefficients,
        generator: Generators = None,
    ) -> Tensor:
        a_next = coef.alpha_cumprod_prev
        var = ancestral_variance(coef.alpha_cumprod, a_next, self.eta)
        direction = math.sqrt(max(1.0 - a_next - var, 0.0))
        out = _euler(required_x0(x0, self), eps, a_next, direction)
        if var > 0.0:
            noise = randn(x_t.shape, generator, device=x_t.device, dtype=x_t.dtype)
            out.add_(noise, alpha=math.sqrt(var))
        return out


class HeunSampler(Sampler):
    """Heun's second-order method on the probability-flow ODE in ``sigma`` (Karras et al. 2022,
    Algorithm 1, deterministic; k-diffusion's ``sample_heun``; diffusers'
    ``HeunDiscreteScheduler``).

    A step from ``sigma`` to ``sigma'`` (``h = sigma' - sigma``) takes the Euler step
    ``z_e = z + h d`` with ``d = eps_hat(z; sigma)`` (Algorithm 1, lines 4-5), calls the network
    there, ``d' = eps_hat(z_e; sigma')`` (line 7), and takes the trapezoid instead:
    ``z' = z + h (d + d') / 2`` (line 8). For the VP state ``x`` ``(B, C, H, W)``, with
    ``c = sqrt(abar') h = sqrt(1 - abar') - sqrt(abar' (1 - abar) / abar)``:

        ``x_e = sqrt(abar') x0_hat(x) + sqrt(1 - abar') eps_hat(x)``,
        ``x' = x_e + c / 2 (eps_hat(x_e) - eps_hat(x))``,

    with ``eps_hat(x_e)`` from the network at the next timestep. The step to the clean image
    (``sigma' = 0``, where ``d'`` is undefined) is a plain Euler step, as in Algorithm 1
    (line 6), so ``N`` steps make ``2N - 1`` network calls; a chain that ends noisy
    (``end_step >= 0``) lands on a real timestep, and its last step is corrected too.

    ``reverse_sample(steps=C)`` counts network calls: :meth:`steps_for_calls` gives the number
    of steps ``S``, and ``C - S`` of them are second order. With a clean end ``S = C // 2 + 1``:
    odd ``C`` corrects every step but the last (Karras et al.'s sampler, and diffusers' with
    ``(C + 1) / 2`` inference steps), even ``C`` leaves one more step to Euler. With a noisy end
    ``S = ceil(C / 2)``: even ``C`` corrects every step, odd ``C`` leaves one to Euler. The step
    left to Euler is the one with the largest noise-level ratio ``sigma / sigma'``
    (:func:`second_order_steps`): Euler's step is DDIM's, exact wherever ``x0_hat`` stays
    constant over the step however long it is, while the trapezoid averages a slope taken near
    pure noise with one taken far below. On the exact denoiser of Gaussian data this beat both
    "the first step" and "the step before the last" over linear and cosine schedules and four
    spacings (data N(0.2, 0.25²); cosine, ``T = 1000``, trailing, 10 calls: mean error 0.06,
    against 1.45 for the step before the last; Karras spacing: 0.18, against 1.43 for the first
    step).

    Caveat, measured there too: where the first step starts from a very large ``sigma`` (the
    cosine schedule's last timestep has ``sigma = 2.0e4``) and is corrected, its trapezoid is
    poor (cosine, trailing, 9 calls: mean error 2.6, against 0.06 with 10 calls, which leave
    that step to Euler), and it multiplies any error in its inputs by ``|h| / (2 sigma')``,
    about 3,000 there: float32 rounding, or diffusers' float32 sigmas, move the result by
    1e-4 to 1. Karras spacing or an even budget avoids that step.

    Zero terminal SNR: the correction from ``sigma = inf`` (``abar = 0``) averages slopes over
    an infinite interval and means nothing, so the first step from ``abar = 0`` is an Euler step
    (finite in the VP form above). The budget's corrections go to the other steps; where it
    would have corrected every step, one call is left unused (``C - 1`` calls: clean end with
    odd ``C``, noisy end with even ``C``).

    Owns its loop (two calls per step), so it does not support RePaint resampling.
    """

    name = "heun"

    def __init__(self) -> None:
        """No options (Karras et al.'s deterministic Heun sampler)."""

    def steps_for_calls(self, calls: int, clean_end: bool) -> int:
        """``C // 2 + 1`` steps for ``C`` calls with a clean end, ``ceil(C / 2)`` with a noisy
        one (see the class docstring)."""
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ValueError(f"HeunSampler: calls must be a positive int, got {calls!r}")
        return calls // 2 + 1 if clean_end else (calls + 1) // 2

    def calls_for_steps(self, steps: int, clean_end: bool) -> int:
        """``2 S - 1`` calls for ``S`` steps with a clean end, ``2 S`` with a noisy one."""
        return 2 * steps - 1 if clean_end else 2 * steps

    def sample(self, x: Tensor, chain: Chain) -> Tensor:
        """Run the chain from ``x`` ``(B, C, H, W)`` (see the class docstring)."""
        second = second_order_steps(chain)
        for k, i in enumerate(chain.indices):
            coef = chain.coefficients(i)
            a, a_next = coef.alpha_cumprod, coef.alpha_cumprod_prev
            d = chain.denoise(x, i)
            x = d.x
            eps = d.eps
            x_next = _euler(d.x0, eps, a_next, math.sqrt(1.0 - a_next))  # lines 4-5
            if second[k]:  # lines 7-8, the second call at sigma', plan index i - 1
                c = math.sqrt(1.0 - a_next) - math.sqrt(a_next * (1.0 - a) / a)
                eps_e = chain.denoise(x_next, i - 1).eps
                x_next = torch.add(x_next, eps_e, alpha=0.5 * c).add_(eps, alpha=-0.5 * c)
            x = chain.step_done(k, i, x_next, d)
        return x


def second_order_steps(chain: Chain) -> list[bool]:
    """For each step of ``chain``, whether :class:`HeunSampler` corrects it.

    A step can be corrected where ``abar > 0`` and ``abar' < 1``. The budget pays for
    ``n = chain.calls - S`` corrections (``S`` steps make one call each, a correction one more);
    where it pays for fewer than can be made, the correctable steps with the largest
    noise-level ratio ``sigma / sigma'`` are left to Euler (ties: the later step).
    """
    steps = [chain.coefficients(i) for i in chain.indices]
    # (sigma / sigma')² = (1 - abar) abar' / (abar (1 - abar')), finite where correctable
    ratio = {
        k: (1.0 - c.alpha_cumprod)
        * c.alpha_cumprod_prev
        / (c.alpha_cumprod * (1 - c.alpha_cumprod_prev))
        for k, c in enumerate(steps)
        if c.alpha_cumprod > 0.0 and c.alpha_cumprod_prev < 1.0
    }
    budget = max(chain.calls - len(steps), 0)
    corrected = set(sorted(ratio, key=ratio.__getitem__)[:budget])
    return [k in corrected for k in range(len(steps))]


#: the classes this module registers in :data:`~diffusionkit.samplers.SAMPLERS`
SOLVERS: tuple[type[Sampler], ...] = (EulerSampler, EulerAncestralSampler, HeunSampler)
