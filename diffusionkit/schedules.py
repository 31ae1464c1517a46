"""Noise schedules: the betas of the forward process and every quantity derived from them.

Conventions (stated once, used everywhere in diffusionkit):

* timesteps ``t`` are 0-based integers: ``t = 0`` is the first noising step (step 1 in
  Ho et al. 2020) and ``t = T - 1`` the last;
* ``alphas_cumprod[t]`` is ``abar_t = prod_{s <= t} (1 - beta_s)``, so ``x_t`` has been
  noised ``t + 1`` times;
* every tensor is computed in float64 on the CPU and cast by the caller at use.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusionkit.configurable import Component
from diffusionkit.registry import Registry

__all__ = [
    "SCHEDULES",
    "CosineSchedule",
    "LinearSchedule",
    "NoiseSchedule",
    "RespacedSchedule",
    "SigmoidSchedule",
    "StepCoefficients",
    "ZeroTerminalSNRSchedule",
    "rescale_zero_terminal_snr",
]


def _check_timesteps(timesteps: int) -> int:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
    return timesteps


@dataclass(frozen=True)
class StepCoefficients:
    """Scalars of one reverse step ``x_t -> x_{t-1}``, as Python floats (no device sync).

    ``index`` is the position in the (possibly respaced) schedule; ``index == 0`` is the last
    reverse step, which adds no noise.
    """

    index: int
    beta: float
    alpha: float
    alpha_cumprod: float
    alpha_cumprod_prev: float
    posterior_variance: float
    posterior_mean_coef_x0: float
    posterior_mean_coef_xt: float
    posterior_log_variance_clipped: float


class NoiseSchedule(Component, ABC):
    """Abstract variance schedule ``beta_0 .. beta_{T-1}`` of the forward process.

    Subclasses implement :meth:`compute_betas`; everything else is derived here, once, in
    float64. All attributes are 1-D float64 tensors of length ``T`` on the CPU. The constructor
    arguments are recorded as the schedule's ``config()`` (see
    :class:`~diffusionkit.configurable.Component`), which also gives ``repr``, ``==`` and
    ``hash``.

    Attributes:
        timesteps: number of diffusion steps ``T``.
        betas: ``beta_t``, the variance added at step ``t``.
        alphas: ``alpha_t = 1 - beta_t``.
        alphas_cumprod: ``abar_t = prod_{s<=t} alpha_s`` (Ho et al. 2020, eq. 4).
        alphas_cumprod_prev: ``abar_{t-1}``, with ``abar_{-1} = 1``.
        posterior_variance: ``beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t``
            (Ho et al. 2020, eq. 7); zero at ``t = 0``.
        posterior_mean_coef_x0: coefficient of ``x_0`` in ``mu_tilde_t`` (eq. 7).
        posterior_mean_coef_xt: coefficient of ``x_t`` in ``mu_tilde_t`` (eq. 7).
        posterior_log_variance_clipped: ``log beta_tilde_t`` with ``beta_tilde_0 = 0`` replaced
            by ``beta_tilde_1`` (by ``beta_0`` when ``T = 1``): the lower end of a learned
            variance's range (Nichol & Dhariwal 2021, eq. 15; improved-diffusion's
            ``posterior_log_variance_clipped``).
    """

    def __init__(self, timesteps: int) -> None:
        self.timesteps = _check_timesteps(timesteps)
        betas = self.compute_betas().to(dtype=torch.float64, device="cpu")
        self._set_betas(betas)

    @abstractmethod
    def compute_betas(self) -> Tensor:
        """Return ``beta_t`` for ``t = 0 .. T-1`` as a 1-D float64 tensor."""

    def _set_betas(self, betas: Tensor) -> None:
        if betas.ndim != 1 or betas.numel() != self.timesteps:
            raise ValueError(
                f"{type(self).__name__}: expected {self.timesteps} betas, got shape "
                f"{tuple(betas.shape)}"
            )
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
            raise ValueError(
                f"{type(self).__name__}: every beta must lie in (0, 1]; got min "
                f"{betas.min().item():.3g}, max {betas.max().item():.3g}"
            )
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        # q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)  (Ho et al. 2020, eq. 4)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I)  (Ho et al. 2020, eq. 6-7)
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        self.posterior_mean_coef_x0 = betas * self.alphas_cumprod_prev.sqrt() / one_minus
        self.posterior_mean_coef_xt = (
            (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / one_minus
        )
        floor = self.posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.cat([floor, self.posterior_variance[1:]]).log()

    def step_coefficients(self, index: int) -> StepCoefficients:
        """The scalars of reverse step ``index`` (``0 <= index < T``) as Python floats."""
        if not 0 <= index < self.timesteps:
            raise IndexError(f"step index {index} outside [0, {self.timesteps})")
        table = self.__dict__.get("_step_table")
        if table is None:  # built once: float64 -> Python floats, so the sampling loop never syncs
            columns = (
                self.betas,
                self.alphas,
                self.alphas_cumprod,
                self.alphas_cumprod_prev,
                self.posterior_variance,
                self.posterior_mean_coef_x0,
                self.posterior_mean_coef_xt,
                self.posterior_log_variance_clipped,
            )
            rows = zip(*(c.tolist() for c in columns), strict=True)
            table = [StepCoefficients(i, *row) for i, row in enumerate(rows)]
            self.__dict__["_step_table"] = table
        return table[index]

    @property
    def snr(self) -> Tensor:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)``, shape ``(T,)``."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    def __len__(self) -> int:
        return self.timesteps


class LinearSchedule(NoiseSchedule):
    """Betas linear in ``t`` (Ho et al. 2020, Sec. 4).

    Args:
        timesteps: number of steps ``T``.
        beta_start: ``beta_0`` at ``T = 1000``.
        beta_end: ``beta_{T-1}`` at ``T = 1000``.
        scale_with_timesteps: multiply both ends by ``1000 / T`` (improved-diffusion's
            convention), so ``T = 1000`` is exactly the DDPM paper's schedule and a shorter
            schedule still ends in near-pure noise. ``False`` uses the ends as given (the
            convention of diffusers' ``DDPMScheduler``).
    """

    def __init__(
        self,
        timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        scale_with_timesteps: bool = True,
    ) -> None:
        if not 0.0 < beta_start <= beta_end:
            raise ValueError(
                f"need 0 < beta_start <= beta_end, got beta_start={beta_start}, beta_end={beta_end}"
            )
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.scale_with_timesteps = bool(scale_with_timesteps)
        super().__init__(timesteps)

    def compute_betas(self) -> Tensor:
        scale = 1000.0 / self.timesteps if self.scale_with_timesteps else 1.0
        start, end = self.beta_start * scale, self.beta_end * scale
        if end >= 1.0:
            raise ValueError(
                f"LinearSchedule: beta_end * 1000 / T = {end:.3g} >= 1 at T = {self.timesteps}; "
                "use more timesteps or scale_with_timesteps=False"
            )
        return torch.linspace(start, end, self.timesteps, dtype=torch.float64)


class CosineSchedule(NoiseSchedule):
    """Cosine schedule of Nichol & Dhariwal 2021 (eq. 17).

    ``abar(t) = f(t) / f(0)`` with ``f(t) = cos²((t / T + s) / (1 + s) · π / 2)``, and
    ``beta_t = 1 - abar(t + 1) / abar(t)`` clipped at ``max_beta`` to avoid the singularity
    at the end of the chain.

    Args:
        timesteps: number of steps ``T``.
        s: small offset that keeps ``beta_0`` from being vanishingly small.
        max_beta: upper clip of every beta.
    """

    def __init__(self, timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> None:
        if s < 0:
            raise ValueError(f"s must be >= 0, got {s}")
        if not 0.0 < max_beta <= 1.0:
            raise ValueError(f"max_beta must lie in (0, 1], got {max_beta}")
        self.s = float(s)
        self.max_beta = float(max_beta)
        super().__init__(timesteps)

    def compute_betas(self) -> Tensor:
        steps = torch.arange(self.timesteps + 1, dtype=torch.float64) / self.timesteps
        f = torch.cos((steps + self.s) / (1.0 + self.s) * math.pi / 2) ** 2
        betas = 1.0 - f[1:] / f[:-1]
        return betas.clamp(max=self.max_beta)


class SigmoidSchedule(NoiseSchedule):
    """Sigmoid schedule of Jabri et al. 2022 (RIN, Fig. 8) and Chen 2023 (Algorithm 1).

    ``abar(u) = (sigmoid(end / tau) - sigmoid((u (end - start) + start) / tau)) /
    (sigmoid(end / tau) - sigmoid(start / tau))`` for ``u = t / T`` in ``[0, 1]``, and
    ``beta_t = 1 - abar((t + 1) / T) / abar(t / T)`` clipped at ``max_beta`` (``abar(1) = 0``, so
    the last beta would be 1). The defaults are those of lucidrains'
    ``sigmoid_beta_schedule``; a smaller ``tau`` spends more steps at middle noise levels,
    which helps at high resolutions.

    Args:
        timesteps: number of steps ``T``.
        start: left end of the sigmoid's input range.
        end: right end of the sigmoid's input range (``end > start``).
        tau: temperature dividing the sigmoid's input (``> 0``).
        max_beta: upper clip of every beta.
    """

    def __init__(
        self,
        timesteps: int = 1000,
        start: float = -3.0,
        end: float = 3.0,
        tau: float = 1.0,
        max_beta: float = 0.999,
    ) -> None:
        if not start < end:
            raise ValueError(f"need start < end, got start={start}, end={end}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if not 0.0 < max_beta <= 1.0:
            raise ValueError(f"max_beta must lie in (0, 1], got {max_beta}")
        self.start = float(start)
        self.end = float(end)
        self.tau = float(tau)
        self.max_beta = float(max_beta)
        super().__init__(timesteps)

    def compute_betas(self) -> Tensor:
        u = torch.arange(self.timesteps + 1, dtype=torch.float64) / self.timesteps
        lo, hi = (torch.tensor([self.start, self.end], dtype=torch.float64) / self.tau).sigmoid()
        abar = (hi - ((u * (self.end - self.start) + self.start) / self.tau).sigmoid()) / (hi - lo)
        betas = 1.0 - abar[1:] / abar[:-1]
        return betas.clamp(max=self.max_beta)


class ZeroTerminalSNRSchedule(NoiseSchedule):
    """Another schedule rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1).

    ``sqrt(abar_t)`` is shifted so that its last value is 0 and scaled so that its first value
    is unchanged: ``sqrt(abar'_t) = (sqrt(abar_t) - sqrt(abar_{T-1})) sqrt(abar_0) /
    (sqrt(abar_0) - sqrt(abar_{T-1}))``. So ``abar'_0 = abar_0``, ``abar'_{T-1} = 0``
    (``beta'_{T-1} = 1``: ``x_{T-1}`` is pure noise, as sampling assumes) and ``abar'`` stays
    strictly decreasing.

    At ``t = T - 1`` the noisy image holds no signal, so an ``eps``-predicting network cannot
    give ``x0`` there (``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)`` divides by zero);
    :meth:`~diffusionkit.DenoiseDiffusion.reverse_sample` refuses that combination with a
    clear error. Use ``prediction="v"`` (what Lin et al. recommend) or ``"x0"``.

    Args:
        base: the schedule to rescale; its last ``abar`` must be smaller than its first.
    """

    def __init__(self, base: NoiseSchedule) -> None:
        if not isinstance(base, NoiseSchedule):
            raise TypeError(f"base must be a NoiseSchedule, got {type(base).__name__}")
        if base.timesteps < 2:
            raise ValueError("zero terminal SNR needs a schedule with at least 2 timesteps")
        self.base = base
        super().__init__(base.timesteps)

    def compute_betas(self) -> Tensor:
        root = self.base.alphas_cumprod.sqrt()
        first, last = root[0].item(), root[-1].item()
        root = (root - last) * (first / (first - last))  # Lin et al. 2024, Algorithm 1
        abar = root.square()
        abar[0], abar[-1] = self.base.alphas_cumprod[0], 0.0  # exactly, whatever the rounding
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return 1.0 - abar / abar_prev


def rescale_zero_terminal_snr(schedule: NoiseSchedule) -> ZeroTerminalSNRSchedule:
    """Return ``schedule`` rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1).

    See :class:`ZeroTerminalSNRSchedule`; pair it with ``prediction="v"``.
    """
    return ZeroTerminalSNRSchedule(schedule)


class RespacedSchedule(NoiseSchedule):
    """A schedule restricted to a subsequence of another's timesteps.

    For kept timesteps ``k_0 < k_1 < ... < k_{S-1}`` of ``base``, the new schedule has
    ``abar'_i = abar_{k_i}`` and ``beta'_i = 1 - abar_{k_i} / abar_{k_{i-1}}`` (Nichol &
    Dhariwal 2021, Sec. 4), so a sampler stepping through it moves between exactly the marginals
    ``q(x_{k_i} | x_0)`` of the base process. The network is still called with the base
    timestep ``k_i``: see :attr:`kept`.

    Args:
        base: the schedule the model was trained with.
        kept: the base timesteps to keep, strictly increasing, in ``[0, base.timesteps)``.
    """

    def __init__(self, base: NoiseSchedule, kept: Sequence[int] | Tensor) -> None:
        kept_t = torch.as_tensor(kept, dtype=torch.int64).flatten()
        if kept_t.numel() == 0 or (kept_t[1:] <= kept_t[:-1]).any():
            raise ValueError("kept timesteps must be non-empty and strictly increasing")
        if kept_t[0] < 0 or kept_t[-1] >= base.timesteps:
            raise ValueError(f"kept timesteps must lie in [0, {base.timesteps})")
        self.base = base
        self.kept = kept_t
        super().__init__(int(kept_t.numel()))

    def compute_betas(self) -> Tensor:
        abar = self.base.alphas_cumprod[self.kept]
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return 1.0 - abar / abar_prev


#: schedules by class name, for configs (``RespacedSchedule`` is derived at sampling time only)
SCHEDULES: Registry[NoiseSchedule] = Registry("noise schedule")
SCHEDULES.register(LinearSchedule, "linear")
SCHEDULES.register(CosineSchedule, "cosine")
SCHEDULES.register(SigmoidSchedule, "sigmoid")
SCHEDULES.register(ZeroTerminalSNRSchedule, "zero-terminal-snr")
