"""Which timesteps a sampler visits when it takes fewer steps than the model was trained with.

``Spacing.TRAILING`` (the default) keeps ``steps`` evenly spaced timesteps that always
include the last one, ``T - 1``, so sampling starts from (near) pure noise; see Lin et al.
2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2, for why the
other two conventions can start from a partially noised step.

``KARRAS`` and ``LOG_SNR`` space the steps by noise level instead of by index, so they need the
schedule: Karras et al. 2022 (eq. 5, ``rho = 7``) space ``sigma^(1 / rho)`` evenly, with
``sigma_t = sqrt((1 - abar_t) / abar_t)``, which puts more steps at low noise; ``LOG_SNR``
spaces ``lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t))`` evenly, the step sizes DPM-Solver's
error analysis assumes (Lu et al. 2022a, Sec. 3.3; diffusers' ``use_lu_lambdas``). Both keep
the first and the last timestep and map every other noise level to the nearest integer
timestep (diffusers calls the network at fractional timesteps instead; diffusionkit's networks
take integer timesteps, so the schedule's own ``abar`` of the chosen timestep is used, exactly).
"""

from __future__ import annotations

import bisect
import math
from enum import Enum

import torch
from torch import Tensor

#: Karras et al. 2022's rho (eq. 5): 7 balances the error at high and low noise (their Fig. 13)
KARRAS_RHO = 7.0

__all__ = ["Spacing"]


class Spacing(str, Enum):
    """Rule for choosing ``steps`` of the ``T`` training timesteps (0-based, ascending).

    * ``TRAILING``: ``round(T - k T / steps) - 1`` for ``k = 0 .. steps-1``: includes ``T - 1``.
    * ``LEADING``: ``k * (T // steps)``: includes ``0``, may stop short of ``T - 1``
      (diffusers' default for DDIM).
    * ``LINSPACE``: ``round(linspace(0, T - 1, steps))``: includes both ends.
    * ``KARRAS``: evenly spaced in ``sigma^(1/7)`` (Karras et al. 2022, eq. 5): includes both
      ends, more steps at low noise. Needs the schedule.
    * ``LOG_SNR``: evenly spaced in ``lambda = log(alpha / sigma)`` (Lu et al. 2022a):
      includes both ends. Needs the schedule.

    Every rule gives ``0, 1, ..., T - 1`` when ``steps == T``.
    """

    TRAILING = "trailing"
    LEADING = "leading"
    LINSPACE = "linspace"
    KARRAS = "karras"
    LOG_SNR = "log-snr"

    @property
    def needs_schedule(self) -> bool:
        """Whether the rule spaces by noise level (pass ``alphas_cumprod``)."""
        return self in (Spacing.KARRAS, Spacing.LOG_SNR)

    def timesteps(
        self, num_train_timesteps: int, steps: int, alphas_cumprod: Tensor | None = None
    ) -> Tensor:
        """Return the kept timesteps, ascending, as an int64 tensor of length ``steps``.

        Args:
            num_train_timesteps: ``T``, the number of timesteps to choose from.
            steps: how many to keep, ``1 <= steps <= T``.
            alphas_cumprod: ``(T,)`` the schedule's ``abar_t``; needed by ``KARRAS`` and
                ``LOG_SNR`` only.
        """
        total = num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
            raise ValueError(f"steps must be an int in [1, {total}], got {steps!r}")
        if self.needs_schedule:
            if alphas_cumprod is None or alphas_cumprod.shape != (total,):
                raise ValueError(
                    f"{self.value} spacing chooses timesteps by noise level: pass the "
                    f"schedule's alphas_cumprod, shaped ({total},)"
                )
            return _by_noise_level(self, alphas_cumprod, steps)
        if self is Spacing.TRAILING:
            kept = torch.arange(total, 0, -total / steps, dtype=torch.float64)[:steps]
            kept = torch.round(kept) - 1
        elif self is Spacing.LEADING:
            kept = torch.arange(steps, dtype=torch.float64) * (total // steps)
        else:
            kept = torch.round(torch.linspace(0, total - 1, steps, dtype=torch.float64))
        kept = kept.to(torch.int64).sort().values
        if kept.unique().numel() != steps:  # cannot happen for steps <= T; guard the invariant
            raise ValueError(f"{self.value} spacing gave repeated timesteps for steps={steps}")
        return kept


def _by_noise_level(spacing: Spacing, alphas_cumprod: Tensor, steps: int) -> Tensor:
    """``steps`` timesteps evenly spaced in ``sigma^(1/rho)`` or in ``log(alpha / sigma)``."""
    total = alphas_cumprod.numel()
    if steps == total:
        return torch.arange(total)
    if steps == 1:
        return torch.tensor([total - 1])
    abar = alphas_cumprod.double().tolist()
    if not (abar[-1] > 0.0 and abar[0] < 1.0):
        raise ValueError(
            f"{spacing.value} spacing needs a finite noise level at every timestep; this "
            "schedule's first sampled timestep has abar = 0 (zero terminal SNR): use "
            "'trailing' or 'linspace'"
        )
    # log sigma_t = 0.5 log((1 - abar_t) / abar_t), increasing in t
    log_sigma = [0.5 * math.log((1.0 - a) / a) for a in abar]
    lo, hi = log_sigma[0], log_sigma[-1]
    if spacing is Spacing.KARRAS:  # Karras et al. 2022, eq. 5
        inv = 1.0 / KARRAS_RHO
        s_lo, s_hi = math.exp(lo) ** inv, math.exp(hi) ** inv
        targets = [
            math.log((s_hi + k / (steps - 1) * (s_lo - s_hi)) ** KARRAS_RHO) for k in range(steps)
        ]
    else:  # lambda = -log sigma, evenly spaced
        targets = [hi + k / (steps - 1) * (lo - hi) for k in range(steps)]
    # nearest timestep by log sigma, top down, each strictly below the previous and leaving
    # room for the rest: the ends stay T - 1 and 0
    kept: list[int] = []
    for k, target in enumerate(targets):
        j = bisect.bisect_left(log_sigma, target)
        if j > 0 and (j == total or target - log_sigma[j - 1] < log_sigma[j] - target):
            j -= 1
        room = steps - 1 - k  # timesteps still to place below this one
        upper = total - 1 if not kept else kept[-1] - 1
        kept.append(max(min(j, upper), room))
    return torch.tensor(kept[::-1], dtype=torch.int64)
