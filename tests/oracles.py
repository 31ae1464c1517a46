"""Exact denoisers for Gaussian data, used as oracles by the sampler tests.

For data ``x0 ~ N(m, s² I)`` and ``x_t = a x0 + b eps`` (``a = sqrt(abar_t)``,
``b = sqrt(1 - abar_t)``), ``x_t`` is Gaussian with mean ``a m`` and variance
``a² s² + b²``, so the MMSE predictions are linear in ``x_t``:

* ``E[eps | x_t] = b (x_t - a m) / (a² s² + b²)``
* ``E[x0 | x_t] = m + a s² (x_t - a m) / (a² s² + b²)``
* ``E[v | x_t] = a E[eps | x_t] - b E[x0 | x_t]``

Also :class:`FixedV`, which makes any fixed-variance network a learned-variance one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusionkit import NoiseSchedule, Prediction


class GaussianOracle(nn.Module):
    """The exact denoiser for i.i.d. ``N(mean, std²)`` pixels under ``schedule``."""

    def __init__(self, schedule: NoiseSchedule, mean: float, std: float, prediction: str = "eps"):
        super().__init__()
        self.abar = schedule.alphas_cumprod.clone()
        self.mean, self.var = mean, std**2
        self.prediction = Prediction(prediction)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        abar = self.abar.to(x.device)[t].view(-1, *([1] * (x.ndim - 1)))
        a, b = abar.sqrt(), (1 - abar).sqrt()
        x64 = x.double()
        denom = abar * self.var + (1 - abar)
        eps = b * (x64 - a * self.mean) / denom
        x0 = self.mean + a * self.var * (x64 - a * self.mean) / denom
        out = {Prediction.EPS: eps, Prediction.X0: x0, Prediction.V: a * eps - b * x0}
        return out[self.prediction].to(x.dtype)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


class FixedV(nn.Module):
    """A learned-variance network made of a fixed-variance one and a constant ``v``."""

    def __init__(self, base: nn.Module, v: float) -> None:
        super().__init__()
        self.base, self.v = base, v

    def forward(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        out = self.base(x, t, **cond)
        return torch.cat([out, torch.full_like(out, self.v)], dim=1)
