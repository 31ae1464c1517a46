"""Exceptions raised by training."""

from __future__ import annotations

__all__ = ["NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN or infinite; training stopped before the bad
    update touched the weights, and no checkpoint was written after the last good one.

    Attributes:
        step: the 0-based optimizer step at which it happened.
        checkpoint: the last good checkpoint folder, or ``None`` if none was written.
    """

    def __init__(self, message: str, *, step: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
