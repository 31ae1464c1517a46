"""Exceptions and warnings raised by training."""

from __future__ import annotations

__all__ = ["NonFiniteLossError", "TrainingWarning"]


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN or infinite; training stopped before the bad
    update touched the weights, and no checkpoint was written after the last good one.

    Attributes:
        step: the 0-based optimizer step at which it happened.
        checkpoint: the last good checkpoint folder (verified when it was named), or ``None``
            if there is none.
    """

    def __init__(self, message: str, *, step: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class TrainingWarning(UserWarning):
    """Something the user should know that does not stop training: a stale run lock taken
    over, a checkpoint that cannot be verified, damaged checkpoints skipped on resume, newer
    checkpoints moved aside. The command line prints these as ``note:`` lines."""
