"""Learning-rate schedule: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

__all__ = ["LRDecay", "WarmupSchedule"]


class LRDecay(str, Enum):
    """What the learning rate does after the warm-up."""

    CONSTANT = "constant"  #: stay at the base rate (DDPM, Ho et al. 2020, App. B)
    COSINE = "cosine"  #: half-cosine from the base rate down to ``min_factor`` at the last step


@dataclass(frozen=True)
class WarmupSchedule:
    """The learning-rate multiplier of each optimizer step, a pure function of the step.

    For 0-based step ``s``: ``factor(s) = (s + 1) / warmup_steps`` while ``s < warmup_steps``;
    afterwards 1 (``CONSTANT``), or for ``COSINE``
    ``min_factor + (1 - min_factor) * (1 + cos(pi * p)) / 2`` with
    ``p = (s - warmup_steps) / max(1, total_steps - 1 - warmup_steps)``, clipped to ``[0, 1]``.

    Being stateless, the schedule resumes exactly from the step count alone.

    Args:
        warmup_steps: steps of linear warm-up (0: none).
        total_steps: the last step + 1; needed by ``COSINE``.
        decay: see :class:`LRDecay`.
        min_factor: the final multiplier of ``COSINE``.
    """

    warmup_steps: int = 0
    total_steps: int | None = None
    decay: LRDecay = LRDecay.CONSTANT
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "decay", LRDecay(self.decay))
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay is LRDecay.COSINE and (self.total_steps is None or self.total_steps < 1):
            raise ValueError("a cosine learning-rate decay needs total_steps >= 1")
        if not 0.0 <= self.min_factor <= 1.0:
            raise ValueError(f"min_factor must lie in [0, 1], got {self.min_factor}")

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at 0-based optimizer step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay is LRDecay.CONSTANT:
            return 1.0
        assert self.total_steps is not None
        span = max(1, self.total_steps - 1 - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serializable."""
        out = asdict(self)
        out["decay"] = self.decay.value
        return out
