"""Which timesteps a sampler visits when it takes fewer steps than the model was trained with.

``Spacing.TRAILING`` (the default) keeps ``steps`` evenly spaced timesteps that always
include the last one, ``T - 1``, so sampling starts from (near) pure noise; see Lin et al.
2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2, for why the
other two conventions can start from a partially noised step.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

__all__ = ["Spacing"]


class Spacing(str, Enum):
    """Rule for choosing ``steps`` of the ``T`` training timesteps (0-based, ascending).

    * ``TRAILING``: ``round(T - k T / steps) - 1`` for ``k = 0 .. steps-1``: includes ``T - 1``.
    * ``LEADING``: ``k * (T // steps)``: includes ``0``, may stop short of ``T - 1``
      (diffusers' default for DDIM).
    * ``LINSPACE``: ``round(linspace(0, T - 1, steps))``: includes both ends.

    Every rule gives ``0, 1, ..., T - 1`` when ``steps == T``.
    """

    TRAILING = "trailing"
    LEADING = "leading"
    LINSPACE = "linspace"

    def timesteps(self, num_train_timesteps: int, steps: int) -> Tensor:
        """Return the kept timesteps, ascending, as an int64 tensor of length ``steps``."""
        total = num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= total:
            raise ValueError(f"steps must be an int in [1, {total}], got {steps!r}")
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
