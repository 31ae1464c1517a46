"""How the command line reports errors: one line on stderr and a non-zero exit status."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "CLIError", "OneLineParser", "error_line"]

#: exit status of a failure while running (bad data, unreadable file, NaN loss, Hub error)
EXIT_ERROR = 1
#: exit status of a wrong command line or option value
EXIT_USAGE = 2
#: set this environment variable to 1 to see the full traceback instead of one line
DEBUG_ENV = "DIFFUSIONKIT_DEBUG"


class CLIError(Exception):
    """An error to report as one line, with an exit status.

    Args:
        message: what went wrong and, where possible, how to fix it.
        code: :data:`EXIT_USAGE` for a wrong command line, :data:`EXIT_ERROR` otherwise.
    """

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``prog: error: ...``), not usage + error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def error_line(error: BaseException) -> str:
    """The one-line message of an exception.

    ``KeyError`` messages lose their quotes; a message wrapped by a ``DataLoader`` worker
    (which appends the worker's traceback) is reduced to the original error's last line.
    """
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "Original Traceback" in text:
        return lines[-1]
    return " ".join(lines) if len(lines) <= 3 else lines[0]


def debug_enabled() -> bool:
    """True when ``DIFFUSIONKIT_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")
