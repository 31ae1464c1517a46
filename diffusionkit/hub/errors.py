"""The two errors checkpoint loading raises, so callers can tell "missing" from "broken"."""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointNotFoundError"]


class CheckpointError(ValueError):
    """A checkpoint is invalid, corrupt, incompatible or unsafe to load.

    The message names the file (and the folder or Hub repo it came from) and the problem.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A folder, Hub repo, revision or required file does not exist, or the token cannot read it."""
