"""DPM-Solver++ multistep: few-step solvers built on the model's data prediction ``x0_hat``.

Lu et al. 2022b ("DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", arXiv 2211.01095) write the reverse process in the half log-SNR
``lambda_t = log(alpha_t / sigma_t)``, with ``alpha_t = sqrt(abar_t)`` and
``sigma_t = sqrt(1 - abar_t)``. From ``x_s`` the probability-flow ODE has the exact solution
(their Sec. 4.1, the data-prediction form of Lu et al. 2022a's exponential integrator)::

    x_t = (sigma_t / sigma_s) x_s + sigma_t * integral_{lambda_s}^{lambda_t} e^l x0_hat(l) dl

whose linear part is computed exactly; only ``x0_hat`` along the path is approximated. A
multistep solver approximates it from the ``x0_hat`` of the current and the previous one or
two network calls (a polynomial in ``lambda``), so it costs one network call per step:

* :class:`DPMSolverPlusPlus2M` (``"dpm++2m"``): second order, Lu et al. 2022b, Sec. 4.2,
  Algorithm 2;
* :class:`DPMSolverPlusPlus3M` (``"dpm++3m"``): third order, the three-point multistep update
  of the authors' reference code (a quadratic in ``lambda``: Lu et al. 2022a's Taylor
  expansion, Sec. 3.2, to third order), with the quadratic term weighted as its exact
  integral (the reference code and diffusers weight it by half, which makes their "third
  order" update second order; ``halved_d2=True`` reproduces it);
* :class:`DPMSolverPlusPlus2MSDE` (``"dpm++2m-sde"``): the same second-order approximation in
  the exact solution of the reverse *SDE* written with the data prediction
  (SDE-DPM-Solver++(2M), the ``algorithm_type="sde-dpmsolver++"`` of the authors' diffusers
  implementation), which adds fresh noise at every step.

Notation used below, for a step from ``s`` (``abar = coef.alpha_cumprod``) to ``t``
(``abar = coef.alpha_cumprod_prev``): ``h = lambda_t - lambda_s > 0``,
``e^{-h} = (sigma_t alpha_s) / (alpha_t sigma_s)`` (finite also where ``alpha_s = 0``),
``D0 = x0_hat(x_s)`` and the earlier estimates ``m1, m2`` at ``lambda_{s1} > lambda_{s2}``
(``h0 = lambda_s - lambda_{s1}``, ``h1 = lambda_{s1} - lambda_{s2}``, ``r0 = h0 / h``,
``r1 = h1 / h``).

Where the updates differ from diffusers' ``DPMSolverMultistepScheduler`` (all deliberate):

* the timesteps are diffusionkit's plan (``reverse_sample(spacing=...)``): ``"trailing"`` (the
  default) keeps the same timesteps as diffusers' ``timestep_spacing="trailing"``, and the
  two agree to float32 rounding there (tested); diffusers' default ``"linspace"`` keeps other
  timesteps than diffusionkit's ``"linspace"``, and its Karras/Lu-lambda sigmas call the
  network at fractional timesteps, where diffusionkit's ``"karras"``/``"log-snr"`` spacings
  use the nearest integer timesteps with their exact ``abar``;
* the chain ends at the clean image (``final_sigmas_type="zero"``), or at the noisy
  ``x_{end_step}``, which diffusers cannot do; ``"sigma_min"`` is not offered;
* zero terminal SNR: diffusers replaces ``abar = 0`` by ``2**-24``; here ``abar = 0`` is used
  as it is (the first step is then ``x_t = alpha_t x0_hat + sigma_t x_s`` for the ODE), and an
  estimate at ``lambda = -inf`` is left out of later multistep updates (the limit of the
  formulas: it carries no slope information);
* the stochastic solver draws no noise for a last step to the clean image (diffusers draws it
  and multiplies it by 0), and draws in the state's dtype (diffusers always in float32);
* the update is computed in the state's dtype (diffusers upcasts to float32).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import ClassVar

import torch
from torch import Tensor

from diffusionkit.chain import Chain
from diffusionkit.prediction import Prediction
from diffusionkit.samplers.base import Sampler

__all__ = [
    "SOLVERS",
    "DPMSolverPlusPlus2M",
    "DPMSolverPlusPlus2MSDE",
    "DPMSolverPlusPlus3M",
    "DPMSolverPlusPlusMultistep",
    "SolverType",
]

#: chains of fewer steps than this take lower-order final steps (``lower_order_final``): the
#: threshold of the DPM-Solver authors' code and of diffusers
LOWER_ORDER_FINAL_BELOW = 15


class SolverType(str, Enum):
    """How a second-order step weights the slope term ``D1 = (D0 - m1) / r0``.

    Both are second order; they differ in the ``O(h³)`` term.
    """

    #: ``+ 1/2 * alpha_t (1 - e^{-h}) D1``: Lu et al. 2022b, Algorithm 2 (diffusers' default)
    MIDPOINT = "midpoint"
    #: ``+ alpha_t ((e^{-h} - 1) / h + 1) D1``: the exact integral of the linear interpolation
    HEUN = "heun"


class _Level:
    """``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)`` and ``lambda = log(alpha / sigma)`` of
    one noise level, as Python floats (``lambda = -inf`` at ``abar = 0``, ``+inf`` at 1)."""

    __slots__ = ("alpha", "lam", "sigma")

    def __init__(self, abar: float) -> None:
        self.alpha = math.sqrt(abar)
        self.sigma = math.sqrt(1.0 - abar)
        if abar <= 0.0:
            self.lam = -math.inf
        elif abar >= 1.0:
            self.lam = math.inf
        else:  # 0.5 log(abar / (1 - abar)), without forming the ratio
            self.lam = 0.5 * (math.log(abar) - math.log1p(-abar))


class DPMSolverPlusPlusMultistep(Sampler):
    """DPM-Solver++ multistep (Lu et al. 2022b): the shared loop of ``"dpm++2m"``,
    ``"dpm++3m"`` and ``"dpm++2m-sde"`` (see the module docstring for the notation).

    Build one of the subclasses, which fix the :attr:`order` and whether the solver is
    :attr:`stochastic`. Each step makes one network call and reads ``x0_hat`` only (as
    processed by the model's ``x0_processing``: clipping or dynamic thresholding, which the
    paper pairs with its solver). Each step uses the highest order its history allows (the
    first step is first order, the second at most second order), except:

    * a step to the clean image (``sigma_t = 0``, where ``lambda_t = inf``) is always first
      order: ``x_t = x0_hat`` exactly (diffusers' ``final_sigmas_type="zero"``);
    * with ``lower_order_final`` and fewer than 15 steps, the last step is first order and the
      one before it at most second order (the authors' remedy for the instability of
      high-order steps near ``t = 0`` at few steps; diffusers' ``lower_order_final``).

    Args:
        solver_type: the second-order update, :class:`SolverType` (``"midpoint"``, the paper's
            and diffusers' default, or ``"heun"``); :class:`DPMSolverPlusPlus3M` uses it for
            its second-order steps.
        lower_order_final: lower the order of the last steps of chains under 15 steps.

    Shapes: the state ``x`` and every ``x0_hat`` are ``(B, C, H, W)``; all scalar math is in
    float64 Python floats, and each update is a few fused in-place tensor operations.
    """

    #: accuracy order of the multistep update (1 for the first step)
    order: ClassVar[int] = 0
    #: whether the solver adds noise (solves the reverse SDE instead of the ODE)
    stochastic: ClassVar[bool] = False
    #: weight of the third-order update's ``D2`` term relative to the paper-form coefficient
    #: (2: the exact integral; 1: the reference code's, see :class:`DPMSolverPlusPlus3M`)
    _d2_weight: float = 2.0

    def __init__(
        self,
        solver_type: SolverType | str = SolverType.MIDPOINT,
        lower_order_final: bool = True,
    ) -> None:
        if self.order not in (2, 3):
            raise TypeError(
                f"{type(self).__name__} sets no solver order: build DPMSolverPlusPlus2M "
                "('dpm++2m'), DPMSolverPlusPlus3M ('dpm++3m') or DPMSolverPlusPlus2MSDE "
                "('dpm++2m-sde')"
            )
        try:
            self.solver_type = SolverType(solver_type)
        except ValueError:
            valid = ", ".join(repr(v.value) for v in SolverType)
            raise ValueError(
                f"{self.name}: solver_type must be one of {valid}; got {solver_type!r}"
            ) from None
        if not isinstance(lower_order_final, bool):
            raise ValueError(
                f"{self.name}: lower_order_final must be True or False; got {lower_order_final!r}"
            )
        self.lower_order_final = lower_order_final

    # ------------------------------------------------------------------ loop
    def sample(self, x: Tensor, chain: Chain) -> Tensor:
        """Run the chain from ``x`` ``(B, C, H, W)`` (see :meth:`Sampler.sample`)."""
        steps = len(chain.indices)
        lower_final = self.lower_order_final and steps < LOWER_ORDER_FINAL_BELOW
        # (lambda, x0_hat) of the previous calls, oldest first; estimates at lambda = -inf
        # (abar = 0) are left out: in the limit their weight in every update is 0
        history: list[tuple[float, Tensor]] = []
        for k, i in enumerate(chain.indices):
            coef = chain.coefficients(i)
            s, t = _Level(coef.alpha_cumprod), _Level(coef.alpha_cumprod_prev)
            if s.alpha == 0.0:
                self._check_zero_snr(chain)
            d = chain.denoise(x, i)
            x0 = d.x0
            order = min(self.order, len(history) + 1)
            if t.sigma == 0.0 or (lower_final and k == steps - 1):
                order = 1
            elif lower_final and k == steps - 2:
                order = min(order, 2)
            earlier = history[len(history) - order + 1 :]
            noise = chain.noise(d.x) if self.stochastic and t.sigma > 0.0 else None
            x = self._update(d.x, x0, earlier, s, t, noise)
            if s.alpha > 0.0:
                history.append((s.lam, x0))
                del history[: -(self.order - 1)]
            x = chain.step_done(k, i, x, d)
        return x

    def _check_zero_snr(self, chain: Chain) -> None:
        if chain.view.prediction is Prediction.EPS:
            raise ValueError(
                f"{self.name}: the chain starts at abar = 0 (zero terminal SNR), where an "
                "eps-predicting model gives no x0_hat; use a model with prediction='v' or "
                "'x0', or start below the last timestep (start_step)"
            )

    # ---------------------------------------------------------------- update
    def _update(
        self,
        x: Tensor,
        x0: Tensor,
        earlier: list[tuple[float, Tensor]],
        s: _Level,
        t: _Level,
        noise: Tensor | None,
    ) -> Tensor:
        """``x_t`` from ``x_s = x`` and the estimates ``x0`` (at ``s``) and ``earlier``.

        Every update is ``x_t = c_x x_s + c_0 D0 + sum_j c_j m_j (+ c_z z)``: the coefficients
        are computed here in float64 and applied with fused in-place operations.
        """
        h = t.lam - s.lam  # inf for a step from abar = 0 or to abar = 1
        ratio = t.sigma / s.sigma
        if self.stochastic:
            # Exact linear part of the data-prediction SDE: e^{-h} x_s decays twice as fast
            # as in the ODE, and the integral's weight is 1 - e^{-2h}.
            exp_neg_h = t.sigma * s.alpha / (t.alpha * s.sigma)
            c_x = ratio * exp_neg_h
            phi = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
            # heun: 2 alpha_t * integral_0^h e^{-2(h-u)} u/h du = alpha_t (1 - phi / (2h))
            heun = t.alpha * (1.0 - phi / (2.0 * h)) if earlier else 0.0
        else:
            c_x = ratio
            phi = -math.expm1(-h)  # 1 - e^{-h}
            # heun: alpha_t * integral_0^h e^{-(h-u)} u/h du = alpha_t (1 - phi / h)
            heun = t.alpha * (1.0 - phi / h) if earlier else 0.0
        c0 = t.alpha * phi
        terms: list[tuple[Tensor, float]] = []
        if len(earlier) == 1:  # second order (Lu et al. 2022b, Algorithm 2)
            lam1, m1 = earlier[0]
            inv_r0 = h / (s.lam - lam1)  # D1 = (D0 - m1) / r0
            c1 = 0.5 * t.alpha * phi if self.solver_type is SolverType.MIDPOINT else heun
            c0 += c1 * inv_r0
            terms.append((m1, -c1 * inv_r0))
        elif len(earlier) == 2:  # third order (ODE only)
            (lam2, m2), (lam1, m1) = earlier
            r0, r1 = (s.lam - lam1) / h, (lam1 - lam2) / h
            # D1_0 = (D0 - m1) / r0 and D1_1 = (m1 - m2) / r1 are h x0' at the midpoints of
            # the last two intervals; D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) ~ h x0'(lambda_s)
            # and D2 = (D1_0 - D1_1) / (r0 + r1) ~ h² x0''(lambda_s) / 2. The quadratic term
            # x0'' u² / 2 = D2 u² / h² integrates to
            # alpha_t * integral_0^h e^{-(h-u)} u² / h² du = 2 alpha_t (1/2 - (h - phi) / h²).
            c_d2 = self._d2_weight * t.alpha * (0.5 - (h - phi) / (h * h))
            w = r0 / (r0 + r1)
            c10 = heun * (1.0 + w) + c_d2 / (r0 + r1)  # weight of D1_0
            c11 = -heun * w - c_d2 / (r0 + r1)  # weight of D1_1
            c0 += c10 / r0
            terms.append((m1, -c10 / r0 + c11 / r1))
            terms.append((m2, -c11 / r1))
        out = torch.mul(x0, c0)
        if c_x != 0.0:
            out.add_(x, alpha=c_x)
        for m, c in terms:
            out.add_(m, alpha=c)
        if noise is not None:
            out.add_(noise, alpha=t.sigma * math.sqrt(phi))
        return out


class DPMSolverPlusPlus2M(DPMSolverPlusPlusMultistep):
    """DPM-Solver++(2M), Lu et al. 2022b, Sec. 4.2, Algorithm 2: the second-order multistep
    solver of the probability-flow ODE, one network call per step.

    First step (DPM-Solver++1, which equals DDIM with ``eta = 0``; Sec. 4.1)::

        x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D0

    Later steps, with ``D1 = (D0 - m1) / r0`` from the previous call's ``m1``::

        x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D0 + c D1
        c = 1/2 alpha_t (1 - e^{-h})            (solver_type="midpoint", Algorithm 2)
        c = alpha_t ((e^{-h} - 1) / h + 1)       (solver_type="heun")

    See :class:`DPMSolverPlusPlusMultistep` for the arguments and the final steps.
    """

    name = "dpm++2m"
    order = 2


class DPMSolverPlusPlus3M(DPMSolverPlusPlusMultistep):
    """DPM-Solver++(3M): the third-order multistep update, one network call per step.

    ``x0_hat`` along the step is the quadratic in ``lambda`` through the current and the two
    previous estimates, integrated exactly against the exponential weight (the Taylor
    expansion of Lu et al. 2022a, Sec. 3.2, to third order, in the multistep form of the
    authors' reference code, ``multistep_dpm_solver_third_update``)::

        D1_0 = (D0 - m1) / r0,   D1_1 = (m1 - m2) / r1
        D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)          (~ h x0_hat')
        D2 = (D1_0 - D1_1) / (r0 + r1)                    (~ h² x0_hat'' / 2)
        x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D0
              + alpha_t ((e^{-h} - 1) / h + 1) D1
              - 2 alpha_t ((e^{-h} - 1 + h) / h² - 1/2) D2

    The factor 2 on the last term is the exact integral of the quadratic
    (``x0_hat'' u² / 2 = D2 u² / h²``). The authors' reference code, diffusers
    (``solver_order=3``) and k-diffusion (``dpmpp_3m_sde``) weight ``D2`` without it, which
    leaves an ``O(h³)`` local error: their update is second order, not third (on the exact
    Gaussian ODE over a grid uniform in ``lambda``, 32 to 256 steps, the fitted global order
    is 2.2 with their weight and 3.2 with this one; at 8 to 32 steps the two differ little).
    ``halved_d2=True`` reproduces their update (to float rounding), for parity with images
    made elsewhere.

    The first step is first order and the second is :class:`DPMSolverPlusPlus2M`'s (with
    ``solver_type``); the last steps as in :class:`DPMSolverPlusPlusMultistep`. The authors
    recommend 3M for unconditional sampling and 2M for guided sampling.

    Args:
        solver_type: the second-order update of the second step (and of the next-to-last
            one under ``lower_order_final``); see :class:`SolverType`.
        lower_order_final: see :class:`DPMSolverPlusPlusMultistep`.
        halved_d2: weight the ``D2`` term as the reference code and diffusers do (second
            order); ``False`` (the default) is the third-order update.
    """

    name = "dpm++3m"
    order = 3

    def __init__(
        self,
        solver_type: SolverType | str = SolverType.MIDPOINT,
        lower_order_final: bool = True,
        halved_d2: bool = False,
    ) -> None:
        super().__init__(solver_type, lower_order_final)
        if not isinstance(halved_d2, bool):
            raise ValueError(f"{self.name}: halved_d2 must be True or False; got {halved_d2!r}")
        self.halved_d2 = halved_d2
        self._d2_weight = 1.0 if halved_d2 else 2.0


class DPMSolverPlusPlus2MSDE(DPMSolverPlusPlusMultistep):
    """SDE-DPM-Solver++(2M): the second-order multistep solver of the reverse SDE in data
    prediction (Lu et al. 2022b's SDE variant; diffusers' ``algorithm_type="sde-dpmsolver++"``).

    First step (the exact DDPM posterior step ``q(x_t | x_s, x0_hat)``, i.e. DDIM with
    ``eta = 1``; Song et al. 2021, eq. 12 and 16)::

        x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D0
              + sigma_t sqrt(1 - e^{-2h}) z,                 z ~ N(0, I)

    Later steps add ``c D1`` with ``D1 = (D0 - m1) / r0`` and
    ``c = 1/2 alpha_t (1 - e^{-2h})`` (``"midpoint"``) or
    ``c = alpha_t ((1 - e^{-2h}) / (-2h) + 1)`` (``"heun"``). One ``z`` is drawn per step
    through the chain's generator(s), after the step's network call; none for a last step to
    the clean image.
    """

    name = "dpm++2m-sde"
    order = 2
    stochastic = True


#: the classes this module registers in :data:`~diffusionkit.samplers.SAMPLERS`
SOLVERS: tuple[type[Sampler], ...] = (
    DPMSolverPlusPlus2M,
    DPMSolverPlusPlus3M,
    DPMSolverPlusPlus2MSDE,
)
