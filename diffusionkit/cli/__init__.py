"""The ``diffusionkit`` command line: ``train``, ``sample``, ``eval`` and ``push``.

Installed as the ``diffusionkit`` console script and runnable as ``python -m diffusionkit``.
Errors are reported as one line on stderr with a non-zero exit status (2: a wrong command
line or option; 1: a failure while running); set ``DIFFUSIONKIT_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from diffusionkit._version import __version__
from diffusionkit.cli import eval as eval_
from diffusionkit.cli import push, sample, train
from diffusionkit.cli.errors import (
    DEBUG_ENV,
    EXIT_ERROR,
    CLIError,
    OneLineParser,
    debug_enabled,
    error_line,
)

__all__ = ["build_parser", "main"]

# errors whose message is the whole story: bad input, files, missing packages, NaN loss
_EXPECTED = (ValueError, TypeError, KeyError, OSError, ImportError, FloatingPointError)

_COMMANDS = {"train": train.run, "sample": sample.run, "eval": eval_.run, "push": push.run}


def build_parser() -> argparse.ArgumentParser:
    """The ``diffusionkit`` argument parser with its subcommands."""
    parser = OneLineParser(
        prog="diffusionkit",
        description="Train, sample, evaluate and share DDPM models (Ho et al. 2020).",
        epilog="Run 'diffusionkit COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"diffusionkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    train.add_parser(sub)
    sample.add_parser(sub)
    eval_.add_parser(sub)
    push.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (also for ``SystemExit`` from argparse)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code) if isinstance(exit_.code, int) else EXIT_ERROR
    prog = f"diffusionkit {args.command}"
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except CLIError as error:
        if debug_enabled():
            raise
        sys.stderr.write(f"{prog}: error: {error_line(error)}\n")
        return error.code
    except Exception as error:  # the command line's boundary: one line, not a traceback
        if debug_enabled():
            raise
        hint = "" if isinstance(error, _EXPECTED) else f" ({DEBUG_ENV}=1 shows the traceback)"
        sys.stderr.write(f"{prog}: error: {error_line(error)}{hint}\n")
        return EXIT_ERROR
