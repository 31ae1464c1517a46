"""The variational bound on the negative log-likelihood, term by term, in bits per dimension.

A DDPM is a latent-variable model, and the bound of Ho et al. (2020, eq. 5) on
``-log p(x_0)`` splits into one term per timestep. With 0-based model timesteps ``t`` (model
timestep ``t`` is the paper's step ``t + 1``; :mod:`diffusionkit.diffusion`):

* the prior term ``L_prior = KL(q(x_{T-1} | x_0) || N(0, I))``, which has no parameters;
* for ``t = 1 .. T-1``: ``L_t = E_q KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))``, a KL
  between two Gaussians (eq. 6-7 give the posterior ``N(mu_tilde_t, beta_tilde_t I)``, the
  model is ``N(mu_theta, Sigma_theta)``);
* at ``t = 0``: the decoder ``L_0 = -E_q log p(x_0 | x_t)``, a Gaussian integrated over the
  8-bit bin around each pixel (Ho et al. 2020, Sec. 3.3, eq. 13).

The model's mean is the posterior mean at its own estimate ``x0_hat`` (eq. 7, the
parameterization every prediction type shares), its variance fixed (``beta_tilde_t`` or
``beta_t``) or learned (:mod:`diffusionkit.variance`). Each term is in bits per dimension: nats
averaged over the ``C H W`` dimensions and divided by ``log 2``, so the terms add up to the
bound in bits/dim, the unit of Nichol & Dhariwal (2021) and improved-diffusion.

This module holds the math on tensors; :meth:`DenoiseDiffusion.nll
<diffusionkit.DenoiseDiffusion.nll>` runs the model through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffusionkit._random import Generators, rand, randn
from diffusionkit.forward_process import q_sample
from diffusionkit.samplers.ddpm import Variance
from diffusionkit.schedules import NoiseSchedule
from diffusionkit.variance import learned_log_variance

__all__ = [
    "BIN_WIDTH",
    "BoundTerms",
    "bound_strata",
    "bound_term",
    "discretized_gaussian_log_likelihood",
    "fixed_log_variance",
    "model_log_variance",
    "normal_kl",
    "prior_term",
    "variational_bound",
]

#: the width of one 8-bit intensity level in the data range ``[-1, 1]``
BIN_WIDTH = 2.0 / 255.0
_EDGE = 1.0 - 1e-3  # pixels beyond this are the first or last bin, open to +-infinity
_LOG2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` per element, in nats.

    ``0.5 (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)² exp(-logvar2) - 1)``;
    all arguments broadcast together.
    """
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).square() * torch.exp(-logvar2)
        - 1.0
    )


def _log_normal_mass(lower: Tensor, upper: Tensor) -> Tensor:
    """``log(Phi(upper) - Phi(lower))`` for standardized ``lower <= upper``, without the
    cancellation of subtracting two CDFs near 1 (taken on the side of the mirror image)."""
    flip = lower > 0  # both in the upper tail: Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    lo = torch.where(flip, -upper, lower)
    hi = torch.where(flip, -lower, upper)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    # log(e^a - e^b) = a + log(1 - e^(b - a)), with b <= a
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1.0 - 1e-16))


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor, bin_width: float = BIN_WIDTH
) -> Tensor:
    """``log P(x)`` per element for 8-bit data under ``N(mean, exp(log_scale)²)`` integrated
    over each pixel's bin (Ho et al. 2020, eq. 13).

    The bin of ``x`` is ``[x - w/2, x + w/2]`` with ``w = bin_width``; the first bin
    (``x = -1``) extends to ``-inf`` and the last (``x = 1``) to ``+inf``, so the masses of the
    256 levels sum to 1.

    Args:
        x: data ``(B, C, H, W)`` in ``[-1, 1]``, on the 8-bit grid ``-1 + k w``.
        mean: the Gaussian's mean, broadcastable to ``x``.
        log_scale: the log of its standard deviation, likewise.
        bin_width: the bin width ``w``.

    Returns:
        Log-probabilities in nats, shaped like ``x``.
    """
    inv_scale = torch.exp(-log_scale)
    upper = (x + bin_width / 2 - mean) * inv_scale
    lower = (x - bin_width / 2 - mean) * inv_scale
    interior = _log_normal_mass(lower, upper)
    first = torch.special.log_ndtr(upper)  # P(X <= upper)
    last = torch.special.log_ndtr(-lower)  # P(X >= lower)
    return torch.where(x < -_EDGE, first, torch.where(x > _EDGE, last, interior))


def _per_sample_bits(values: Tensor) -> Tensor:
    """``(B, ...)`` nats per element -> ``(B,)`` bits per dimension."""
    return values.flatten(1).mean(dim=1) / _LOG2


def _at(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``table[t]`` as ``(B, 1, 1, 1)`` on ``like``'s device and dtype."""
    return table.to(device=like.device, dtype=like.dtype)[t].view(-1, *([1] * (like.ndim - 1)))


def fixed_log_variance(variance: Variance, schedule: NoiseSchedule) -> Tensor:
    """``log sigma_t²`` ``(T,)`` float64 of a fixed-variance reverse process.

    ``Variance.POSTERIOR``: ``beta_tilde_t``; ``Variance.BETA``: ``beta_t``. At ``t = 0``
    both use ``beta_tilde_1`` (improved-diffusion's ``fixedsmall``/``fixedlarge``): the
    decoder's variance, where ``beta_tilde_0 = 0`` and a tiny ``beta_0`` would give no
    likelihood at all to anything but the mean.
    """
    clipped = schedule.posterior_log_variance_clipped
    if variance is Variance.POSTERIOR:
        return clipped
    return torch.cat([clipped[:1], schedule.betas[1:].log()])


def bound_term(
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    x0_hat: Tensor,
    model_log_variance: Tensor,
    schedule: NoiseSchedule,
) -> Tensor:
    """The bound's term at each sample's timestep, in bits per dimension, ``(B,)``.

    ``KL(q(x_{t-1} | x_t, x_0) || N(mu_theta, Sigma_theta))`` where ``t > 0``, and the decoder
    ``-log p(x_0 | x_t)`` (:func:`discretized_gaussian_log_likelihood`) where ``t = 0``;
    ``mu_theta = mu_tilde_t(x_t, x0_hat)`` (Ho et al. 2020, eq. 7).

    Args:
        x0: the data ``(B, C, H, W)``.
        x_t: ``(B, C, H, W)``, ``x0`` noised to ``t``.
        t: ``(B,)`` int64 model timesteps.
        x0_hat: the model's estimate of ``x0`` ``(B, C, H, W)``.
        model_log_variance: ``log Sigma_theta``, ``(B, C, H, W)`` or ``(B, 1, 1, 1)``.
        schedule: the model's schedule.
    """
    args = (x0, x_t, t, x0_hat, model_log_variance, schedule)
    return torch.where(t == 0, _decoder_bits(*args), _kl_bits(*args))


def _posterior_mean(x_t: Tensor, t: Tensor, x0: Tensor, schedule: NoiseSchedule) -> Tensor:
    """``mu_tilde_t(x_t, x0)`` ``(B, C, H, W)`` (Ho et al. 2020, eq. 7); with the model's
    ``x0_hat`` in place of ``x0`` it is the reverse step's mean ``mu_theta``."""
    c0 = _at(schedule.posterior_mean_coef_x0, t, x_t)
    return c0 * x0 + _at(schedule.posterior_mean_coef_xt, t, x_t) * x_t


def _kl_bits(
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    x0_hat: Tensor,
    model_log_variance: Tensor,
    schedule: NoiseSchedule,
) -> Tensor:
    """``KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))`` in bits/dim ``(B,)``, the
    term where ``t > 0`` (arguments as :func:`bound_term`)."""
    true_mean = _posterior_mean(x_t, t, x0, schedule)
    true_log_variance = _at(schedule.posterior_log_variance_clipped, t, x0)
    model_mean = _posterior_mean(x_t, t, x0_hat, schedule)
    kl = normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)
    return _per_sample_bits(kl)


def _decoder_bits(
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    x0_hat: Tensor,
    model_log_variance: Tensor,
    schedule: NoiseSchedule,
) -> Tensor:
    """The decoder's ``-log p_theta(x_0 | x_1)`` in bits/dim ``(B,)``, the term where ``t = 0``
    (arguments as :func:`bound_term`)."""
    model_mean = _posterior_mean(x_t, t, x0_hat, schedule)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    return _per_sample_bits(nll)


def prior_term(x0: Tensor, schedule: NoiseSchedule) -> Tensor:
    """``KL(q(x_{T-1} | x_0) || N(0, I))`` in bits per dimension, ``(B,)``: what the forward
    process leaves of ``x0`` at its end (near 0 for a schedule that destroys the signal)."""
    last = torch.full((x0.shape[0],), schedule.timesteps - 1, dtype=torch.long, device=x0.device)
    a = _at(schedule.sqrt_alphas_cumprod, last, x0)
    log_variance = _at((1.0 - schedule.alphas_cumprod).log(), last, x0)
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    return _per_sample_bits(normal_kl(a * x0, log_variance, zero, zero))


def bound_strata(timesteps: int, steps: int | None) -> Tensor:
    """How the bound's timesteps are grouped: ``(K, 2)`` int64 rows ``[first, stop)``,
    descending, the last row ``[0, 1)`` (the decoder).

    ``steps=None`` (or ``>= T``): one stratum per timestep, the exact bound in ``T`` network
    calls. Otherwise the KL timesteps ``1 .. T-1`` are split into ``steps - 1`` strata of
    (nearly) equal size, each evaluated at one timestep drawn uniformly within it and counted
    as many times as it has timesteps: stratified sampling, an unbiased estimate of the sum
    of the KL terms in ``steps`` calls.
    """
    if steps is None or steps >= timesteps:
        first = torch.arange(timesteps - 1, -1, -1)
        return torch.stack([first, first + 1], dim=1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(
            f"steps must be an int >= 2 (the decoder and at least one KL term) or None for all "
            f"{timesteps} terms; got {steps!r}"
        )
    edges = torch.linspace(1, timesteps, steps, dtype=torch.float64).round().long()
    strata = torch.stack([edges[:-1], edges[1:]], dim=1).flip(0)
    return torch.cat([strata, torch.tensor([[0, 1]])])


@dataclass
class BoundTerms:
    """The variational bound of a batch, in bits per dimension (all tensors on the CPU).

    Attributes:
        total: ``(B,)``, the bound: ``prior + (weights * terms).sum(1)``.
        prior: ``(B,)``, ``L_prior``.
        terms: ``(B, K)``, the term at each evaluated timestep (KL terms, then the decoder).
        timesteps: ``(B, K)`` int64, the model timesteps of ``terms``, descending (the last is
            0); every row is ``T-1 .. 0`` for the exact bound, and drawn per sample within
            each stratum for an estimate.
        weights: ``(K,)``, how many timesteps each term stands for (all 1 for the exact bound).
    """

    total: Tensor
    prior: Tensor
    terms: Tensor
    timesteps: Tensor
    weights: Tensor


#: ``denoise(x_t, t) -> (x0_hat, log_variance)``: the model's reverse step at ``x_t``
#: ``(B, C, H, W)`` and timesteps ``t`` ``(B,)``; ``log_variance`` broadcastable to ``x_t``
ReverseModel = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def variational_bound(
    model: ReverseModel,
    schedule: NoiseSchedule,
    x0: Tensor,
    *,
    steps: int | None = None,
    generator: Generators = None,
    progress: bool = True,
) -> BoundTerms:
    """Evaluate the bound on ``x0`` ``(B, C, H, W)``: one network call per stratum (see
    :func:`bound_strata`), each at its own draw ``x_t ~ q(x_t | x_0)``; terms in float64.

    Args:
        model: the model's reverse step (see :data:`ReverseModel`).
        schedule: the schedule the model was trained with.
        x0: 8-bit data in ``[-1, 1]``.
        steps: network calls (see :func:`bound_strata`); ``None``: all ``T`` terms.
        generator: source of every draw (one generator, or one per sample): per stratum, the
            timestep (estimates only), then the noise.
        progress: show a progress bar over the terms.
    """
    strata = bound_strata(schedule.timesteps, steps)
    batch, x0_64 = x0.shape[0], x0.double()
    terms, visited = [], []
    for first, stop in tqdm(strata.tolist(), desc="bound", unit="term", disable=not progress):
        t = torch.full((batch,), first, dtype=torch.long)
        if stop - first > 1:  # a timestep drawn uniformly in the stratum, per sample
            t += (rand((batch,), generator, dtype=torch.float64) * (stop - first)).long()
        t = t.to(x0.device)
        noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        a = _at(schedule.sqrt_alphas_cumprod, t, x0)
        x_t = q_sample(x0, a, _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0), noise)
        x0_hat, log_variance = model(x_t, t)
        x_t, x0_hat, log_variance = x_t.double(), x0_hat.double(), log_variance.double()
        term = (_kl_bits if first > 0 else _decoder_bits)(
            x0_64, x_t, t, x0_hat, log_variance, schedule
        )
        terms.append(term.cpu())
        visited.append(t.cpu())
    weights = (strata[:, 1] - strata[:, 0]).double()
    stacked = torch.stack(terms, dim=1)  # (B, K)
    prior = prior_term(x0_64, schedule).cpu()
    total = prior + (stacked * weights).sum(dim=1)
    return BoundTerms(
        total=total.float(),
        prior=prior.float(),
        terms=stacked.float(),
        timesteps=torch.stack(visited, dim=1),
        weights=weights.float(),
    )


def model_log_variance(
    v: Tensor | None, t: Tensor, schedule: NoiseSchedule, fixed: Variance, like: Tensor
) -> Tensor:
    """``log Sigma_theta`` at timesteps ``t`` ``(B,)``: learned from ``v`` ``(B, C, H, W)``
    (:func:`~diffusionkit.variance.learned_log_variance`), or ``fixed`` when ``v`` is ``None``
    (then ``(B, 1, 1, 1)``), in ``like``'s dtype."""
    if v is None:
        return _at(fixed_log_variance(fixed, schedule), t, like)
    log_beta = _at(schedule.betas.log(), t, v)
    log_beta_tilde = _at(schedule.posterior_log_variance_clipped, t, v)
    return learned_log_variance(v, log_beta, log_beta_tilde)
