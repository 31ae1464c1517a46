"""UniPC: the unified predictor-corrector multistep solver (Zhao et al. 2023, arXiv 2302.04867).

UniPC solves the probability-flow ODE with an exponential integrator in the half log-SNR
``lambda_t = log(alpha_t / sigma_t)`` (``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``)
on the model's data prediction ``x0_hat``, like DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095).
Each step has two parts that share one analytical form:

* UniP-p, the predictor: a ``p``-th order multistep step from ``x0_hat`` at the current and the
  ``p - 1`` previous timesteps (Corollary 3.2 of the paper: order ``p``);
* UniC-p, the corrector: once the network has been called at the predicted state, the step
  just taken is recomputed with that new ``x0_hat`` as one more interpolation point (Theorem
  3.1: order ``p + 1``). The corrector needs no call of its own (it reuses the call the next
  step makes anyway), so ``steps`` stays the number of network calls; the last step is not
  corrected, since no call follows it.
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor

from diffusionkit.chain import Chain
from diffusionkit.samplers.base import Sampler

__all__ = ["SOLVERS", "UniPCSampler", "UniPCVariant"]


class UniPCVariant(str, Enum):
    """The function ``B`` that scales UniPC's higher-order terms (Zhao et al. 2023, Sec. 3).

    Theorem 3.1 holds for any non-zero ``B(h) = O(h)``; the paper compares ``B_1(h) = h`` and
    ``B_2(h) = e^h - 1``. In the data-prediction form the exponential integrator runs over
    ``z = -h`` (``h = lambda_t - lambda_s > 0``), so here:

    * ``BH1``: ``B(z) = z = -h`` (diffusers' docstring suggests it for unconditional sampling
      under 10 steps);
    * ``BH2``: ``B(z) = e^z - 1 = e^{-h} - 1``, the default of the authors' code and of diffusers,
      and the one that stays finite for the infinite step out of ``abar = 0``.
    """

    BH1 = "bh1"
    BH2 = "bh2"


def _log_snr(abar: float) -> float:
    """``lambda = log(alpha / sigma)`` for ``abar = alpha²``: ``-inf`` at 0, ``+inf`` at 1."""
    if abar <= 0.0:
        return -math.inf
    if abar >= 1.0:
        return math.inf
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """``matrix⁻¹ rhs`` for the solver's small (at most 3 x 3) systems, in Python floats.

    Gaussian elimination with partial pivoting: no tensors, so no device sync in the loop.
    """
    n = len(rhs)
    a = [[*row, value] for row, value in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if a[pivot][col] == 0.0:
            raise ValueError("UniPC: singular interpolation system (repeated log-SNR values)")
        a[col], a[pivot] = a[pivot], a[col]
        for row in range(col + 1, n):
            factor = a[row][col] / a[col][col]
            for k in range(col, n + 1):
                a[row][k] -= factor * a[col][k]
    out = [0.0] * n
    for row in reversed(range(n)):
        tail = sum(a[row][k] * out[k] for k in range(row + 1, n))
        out[row] = (a[row][n] - tail) / a[row][row]
    return out


def _step_weights(
    abar_s: float,
    abar_t: float,
    earlier: list[float],
    order: int,
    corrector: bool,
    variant: UniPCVariant,
) -> list[float]:
    """The weights of one UniP-p (or UniC-p) step from ``abar_s`` to ``abar_t``, in float64.

    The step is ``x_t = w_x x_s + sum_j w_j m_j (+ w_t m_t)``, where ``m_0 = x0_hat`` at ``s``,
    ``m_j`` (``j = 1 .. order - 1``) is ``x0_hat`` at the earlier log-SNR ``earlier[j - 1]``
    (newest first) and ``m_t = x0_hat`` at ``t`` (corrector only).

    Returns:
        ``[w_x, w_0, .., w_{order-1}]``, and ``w_t`` appended for the corrector.
    """
    alpha_t, sigma_t = abar_t**0.5, (1.0 - abar_t) ** 0.5
    lam_s, lam_t = _log_snr(abar_s), _log_snr(abar_t)
    h = lam_t - lam_s  # > 0; infinite out of abar = 0 or into abar = 1
    z = -h  # the data-prediction integrator runs over -h
    expm1_z = math.expm1(z)  # e^{-h} - 1 in [-1, 0); -1 where h is infinite
    # sigma_t / sigma_s and the first-order weight alpha_t (1 - e^{-h}): DDIM's step, finite
    # at alpha_s = 0 (e^{-h} = sigma_t alpha_s / (alpha_t sigma_s) = 0) and at sigma_t = 0
    w_x = sigma_t / (1.0 - abar_s) ** 0.5
    w_m = [-alpha_t * expm1_z] + [0.0] * (order - 1)
    points = order - 1 + int(corrector)  # interpolation points besides m_0
    if points == 0:
        return [w_x, *w_m]
    b_z = z if variant is UniPCVariant.BH1 else expm1_z
    if not math.isfinite(b_z):  # B(z) = z at an infinite step
        raise ValueError(
            "UniPC variant 'bh1' cannot correct the step out of abar = 0 (zero terminal SNR): "
            "there B = -h is infinite; use variant='bh2' (the default), corrector=False, or "
            "a start_step below the last timestep"
        )
    # r_j = (lambda_{s_j} - lambda_s) / h: where the earlier points sit, in units of the step
    ratios = [(lam - lam_s) / h for lam in earlier[: order - 1]]
    if corrector:
        ratios.append(1.0)  # the new point m_t, at lambda_t
    if points == 1:  # the p = 2 predictor and the p = 1 corrector: a_1 = 1/2 (authors' code)
        rhos = [0.5]
    else:  # sum_j rho_j r_j^(k-1) = z phi_{k+1}(z) k! / B(z) for k = 1 .. points, with the
        # exponential integrators' phi_1(z) = (e^z - 1) / z, phi_{k+1} = (phi_k - 1/k!) / z
        rhs = []
        z_phi = expm1_z / z - 1.0  # z phi_2(z)
        factorial = 1.0
        for k in range(1, points + 1):
            rhs.append(z_phi * factorial / b_z)
            factorial *= k + 1
            z_phi = z_phi / z - 1.0 / factorial
        rhos = _solve([[r ** (k - 1) for r in ratios] for k in range(1, points + 1)], rhs)
    # - alpha_t B(z) sum_j rho_j (m_j - m_0) / r_j, spread over the m's (r = 1 for m_t)
    scale = -alpha_t * b_z
    extra = [scale * rho / r for rho, r in zip(rhos, ratios, strict=True)]
    w_m[0] -= sum(extra)
    for j in range(1, order):
        w_m[j] += extra[j - 1]
    return [w_x, *w_m, *extra[order - 1 :]]  # extra[order - 1]: m_t's weight (corrector)


def _combine(weights: list[float], x: Tensor, ms: list[Tensor]) -> Tensor:
    """``weights[0] x + sum_j weights[j + 1] ms[j]`` (as many ``ms`` as weights) as one fresh
    tensor, accumulated in place."""
    out = torch.mul(x, weights[0])
    for m, w in zip(ms, weights[1:], strict=True):
        if w != 0.0:
            out.add_(m, alpha=w)
    return out


class UniPCSampler(Sampler):
    """UniPC multistep with data prediction (Zhao et al. 2023): predictor UniP-p, corrector UniC-p.

    With ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``, ``lambda = log(alpha / sigma)``, a step
    goes from ``s`` to ``t`` with ``h = lambda_t - lambda_s > 0`` and ``z = -h``; ``m_0`` is
    ``x0_hat`` at ``s`` and ``m_j`` that of the ``j``-th earlier call,
    ``r_j = (lambda_{s_j} - lambda_s) / h < 0`` and ``D_j = (m_j - m_0) / r_j``. UniP-p
    (Corollary 3.2, written for data prediction):

        ``x_t = (sigma_t / sigma_s) x_s - alpha_t (e^z - 1) m_0 - alpha_t B(z) sum_{j<p} a_j D_j``

    whose first-order part, ``(sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m_0``, is DDIM's
    deterministic step (Song et al. 2021, eq. 12 with ``eta = 0``) and DPM-Solver++'s first-order
    step (Lu et al. 2022). The weights solve ``sum_j a_j r_j^(k-1) = z phi_{k+1}(z) k! / B(z)``
    for ``k = 1 .. p - 1``, with the exponential integrators' ``phi_1(z) = (e^z - 1) / z`` and
    ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``, except ``a_1 = 1/2`` for ``p = 2`` (the authors'
    code and diffusers). After the network has been called at ``x_t``, UniC-p (Theorem 3.1)
    recomputes the same step with ``m_t = x0_hat(x_t)`` as one more point, at ``r = 1``:

        ``x_t^c = (sigma_t / sigma_s) x_s - alpha_t (e^z - 1) m_0
        - alpha_t B(z) (sum_{j<p} c_j D_j + c_p (m_t - m_0))``

    with ``c`` solving the same system for ``k = 1 .. p`` (``c_1 = 1/2`` for ``p = 1``). The
    next step starts from ``x_t^c``; its ``m_0`` is the ``m_t`` the network gave at the
    uncorrected ``x_t`` (so the corrector costs no call). Every update is elementwise:
    tensors ``(B, C, H, W)``, scalars Python floats computed in float64 from ``abar`` before the
    loop (``sigma_t / sigma_s`` and ``alpha_t (1 - e^{-h}) = alpha_t - sigma_t alpha_s / sigma_s``
    stay finite at ``alpha_s = 0`` and at ``sigma_t = 0``).

    Orders. The first steps warm up (order ``1, 2, ..``) while the history fills; the step to
    the clean image (``abar = 1``, ``lambda = +inf``) is first order, ``x_0 = m_0`` (diffusers'
    ``final_sigmas_type="zero"``: extrapolating in ``lambda`` to ``+inf`` diverges); and with
    ``lower_order_final`` the order of step ``k`` of ``n`` is at most ``n - k`` (the last
    ``order - 1`` steps count down to 1), as diffusers' ``UniPCMultistepScheduler`` does at any
    step count. (Its docstring says the option applies under 15 steps, DPM-Solver's rule, but
    its code applies it always; diffusionkit follows the code. For the default order 2 with a
    clean end the two rules give the same samples, since the last step is first order anyway.)

    Zero terminal SNR (``abar = 0`` at the first timestep, ``lambda = -inf``): the first step is
    first order and finite, ``x_t = sigma_t x_s + alpha_t m_0``; with ``BH2`` its correction is
    finite too (``B = -1``); a history point at ``lambda = -inf`` carries no weight in the
    extrapolation (``D_j = 0`` in the limit), so it is left out of later steps' history.
    ``BH1`` with the corrector cannot correct that step (``B(z) = -h`` is infinite) and raises.

    Not memoryless, so no RePaint resampling; inpainting's plain replacement works (the known
    region of the state never reaches the unknown one except through network calls, which see
    the replaced state).

    Args:
        solver_order: ``p`` in ``1 .. 3``, the predictor's order (2: the authors' recommendation
            for guided sampling and diffusers' default; 3 for unconditional sampling).
        variant: ``B``, ``"bh2"`` (default) or ``"bh1"`` (see :class:`UniPCVariant`).
        corrector: apply UniC after every step but the last (``False``: UniP alone).
        lower_order_final: lower the order of the last ``solver_order - 1`` steps (see above).
    """

    name = "unipc"

    def __init__(
        self,
        solver_order: int = 2,
        variant: UniPCVariant | str = UniPCVariant.BH2,
        corrector: bool = True,
        lower_order_final: bool = True,
    ) -> None:
        if isinstance(solver_order, bool) or not isinstance(solver_order, int):
            raise ValueError(f"solver_order must be an int in [1, 3]; got {solver_order!r}")
        if not 1 <= solver_order <= 3:
            raise ValueError(f"solver_order must be an int in [1, 3]; got {solver_order!r}")
        try:
            self.variant = UniPCVariant(variant)
        except ValueError:
            valid = ", ".join(repr(v.value) for v in UniPCVariant)
            raise ValueError(f"variant must be one of {valid}; got {variant!r}") from None
        for arg, value in (("corrector", corrector), ("lower_order_final", lower_order_final)):
            if not isinstance(value, bool):
                raise ValueError(f"{arg} must be a bool; got {value!r}")
        self.solver_order = solver_order
        self.corrector = corrector
        self.lower_order_final = lower_order_final

    def _orders(self, abars: list[float]) -> list[int]:
        """The predictor's order at every step of a chain through ``abars`` (its ``n + 1``
        noise levels, first to last)."""
        n = len(abars) - 1
        orders = []
        usable = 0  # earlier calls at a finite log-SNR
        for k in range(n):
            order = min(self.solver_order, usable + 1)  # warm-up while the history fills
            if self.lower_order_final:
                order = min(order, n - k)
            if abars[k] <= 0.0 or abars[k + 1] >= 1.0:  # an infinite step in lambda
                order = 1
            orders.append(order)
            usable = usable + 1 if abars[k] > 0.0 else 0
        return orders

    def _weights(self, abars: list[float]) -> tuple[list[list[float]], list[list[float]]]:
        """The weights of every step's predictor and corrector, before the loop (no Python
        arithmetic between network calls): ``predictor[k]`` weighs ``[x_s, m_0, .., m_{p-1}]``
        of step ``k``, ``corrector[k]`` (for ``k >= 1``) weighs ``[x_s, m_0, .., m_{p-1}, m_t]``
        of step ``k - 1``, where ``m_t`` is ``x0_hat`` of the call at step ``k``."""
        orders = self._orders(abars)
        lambdas = [_log_snr(a) for a in abars]
        predictor: list[list[float]] = []
        corrector: list[list[float]] = [[]]  # nothing to correct before the first step
        for k, p in enumerate(orders):
            earlier = lambdas[:k][::-1]  # the log-SNRs of the earlier calls, newest first
            predictor.append(_step_weights(abars[k], abars[k + 1], earlier, p, False, self.variant))
            if self.corrector and k + 1 < len(orders):  # the last step is not corrected
                corrector.append(
                    _step_weights(abars[k], abars[k + 1], earlier, p, True, self.variant)
                )
        return predictor, corrector

    def sample(self, x: Tensor, chain: Chain) -> Tensor:
        """Run UniPC over ``chain`` from ``x`` ``(B, C, H, W)`` (see the class docstring)."""
        steps = [chain.coefficients(i) for i in chain.indices]
        abars = [c.alpha_cumprod for c in steps] + [steps[-1].alpha_cumprod_prev]
        predictor, corrector = self._weights(abars)
        history: list[Tensor] = []  # x0_hat of the earlier calls, newest first
        start = x  # the state the last predictor step started from
        for k, i in enumerate(chain.indices):
            d = chain.denoise(x, i)
            m_t = d.x0
            if k > 0 and self.corrector:  # UniC for step k - 1, with the call just made
                weights = corrector[k]
                x = _combine(weights, start, [*history[: len(weights) - 2], m_t])
            else:
                x = d.x
            history.insert(0, m_t)
            del history[self.solver_order :]
            start = x
            weights = predictor[k]
            x = _combine(weights, start, history[: len(weights) - 1])
            x = chain.step_done(k, i, x, d)
        return x


#: the classes this module registers in :data:`~diffusionkit.samplers.SAMPLERS`
SOLVERS: tuple[type[Sampler], ...] = (UniPCSampler,)
