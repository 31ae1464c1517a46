"""Exponential moving average (EMA) of a network's weights, with a warm-up of the decay."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """An exponential moving average of a module's parameters, kept in a separate copy.

    After the ``n``-th call of :meth:`update` (``n = 0, 1, 2, ...``) every floating-point
    parameter ``theta`` of the averaged copy becomes::

        d_n   = min(decay, (1 + n) / (10 + n))    # with warmup (the default)
        d_n   = decay                             # without warmup
        ema  <- d_n * ema + (1 - d_n) * theta

    The warm-up is the ``num_updates`` rule of TensorFlow's ``ExponentialMovingAverage``
    (also used by the DDPM reference code): early on the average follows the weights closely,
    so it is not dominated by the random initialisation, the cause of "EMA samples are pure
    noise" after short runs. Buffers (and integer tensors) are copied, not averaged.

    The averaged copy (:attr:`module`) is in eval mode, never requires gradients, and is what
    sampling and export use. It is an independent module: training never writes into it,
    and it never writes into the trained network.

    Args:
        model: the network to average (unwrapped: not a DistributedDataParallel wrapper).
        decay: the target decay ``decay`` in ``[0, 1)``; 0.999 averages over about the last
            1,000 updates, 0.9999 over 10,000.
        warmup: use the warm-up ``min(decay, (1 + n) / (10 + n))``.

    Attributes:
        module: the averaged copy of ``model``.
        num_updates: how many times :meth:`update` has run (``n`` above).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def config(self) -> dict[str, Any]:
        """The constructor arguments other than ``model``."""
        return {"decay": self.decay, "warmup": self.warmup}

    def decay_at(self, n: int) -> float:
        """The decay ``d_n`` used by the ``n``-th update (0-based)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average towards ``model``'s current weights; returns the decay used.

        Args:
            model: the trained network, with the same architecture as :attr:`module`.
        """
        d = self.decay_at(self.num_updates)
        averaged: list[Tensor] = []
        current: list[Tensor] = []
        for (name, e), (other, p) in zip(
            self.module.named_parameters(), model.named_parameters(), strict=True
        ):
            if name != other:
                raise ValueError(f"EMA and model parameters differ: {name!r} vs {other!r}")
            if e.is_floating_point():
                averaged.append(e)
                current.append(p.detach().to(e.dtype))
            else:
                e.copy_(p)
        if averaged:
            # lerp: e + (1 - d) (p - e) = d e + (1 - d) p
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        for (name, buf), (other, b) in zip(
            self.module.named_buffers(), model.named_buffers(), strict=True
        ):
            if name != other:
                raise ValueError(f"EMA and model buffers differ: {name!r} vs {other!r}")
            buf.copy_(b)
        self.num_updates += 1
        return d

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights (the state dict of :attr:`module`)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor], num_updates: int) -> None:
        """Restore the averaged weights (strictly: every key must match) and the update count."""
        self.module.load_state_dict(state, strict=True)
        if num_updates < 0:
            raise ValueError(f"num_updates must be >= 0, got {num_updates}")
        self.num_updates = int(num_updates)

    def to(self, device: torch.device | str) -> EMA:
        """Move the averaged copy to ``device``; returns ``self``."""
        self.module.to(device)
        return self

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay}, warmup={self.warmup}, num_updates={self.num_updates})"
