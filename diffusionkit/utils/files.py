"""Open only regular files: a FIFO, a device or a folder where a file is expected is an error.

``open("x.png")`` on a FIFO blocks until some other process writes to it, which may be never;
on a character device (``/dev/zero``) it reads without end. Opening with ``O_NONBLOCK`` returns
at once whatever the path is, and ``fstat`` on the opened descriptor (not on the path, which
could be swapped in between) tells what was opened.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["NotARegularFileError", "is_regular_file", "open_regular", "read_regular"]


class NotARegularFileError(OSError):
    """A path names a FIFO, a device, a socket or a folder where a file was expected."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is (or links to) a regular file; never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | os.PathLike[str], what: str = "file") -> BinaryIO:
    """Open ``path`` for binary reading, refusing anything but a regular file.

    Args:
        path: the file (symbolic links are followed).
        what: what the file is, for the message (``"image file"``, ``"run settings"``).

    Raises:
        NotARegularFileError: ``path`` is a FIFO, a device, a socket or a folder.
        OSError: it cannot be opened (``FileNotFoundError``, ``PermissionError``, ...).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise NotARegularFileError(f"{what} {path} is a folder, not a file") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(
                f"{what} {path} is {_kind(mode)}, not a regular file; only regular files are read"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a regular file: ordinary reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], what: str = "file") -> bytes:
    """The whole content of a regular file (see :func:`open_regular`)."""
    with open_regular(Path(path), what) as f:
        return f.read()
