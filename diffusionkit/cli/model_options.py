"""The options of the subcommands that use a trained model (``sample``, ``eval``): which model,
how to load it, at what size, with which sampler, and their checks.

Each check raises :class:`~diffusionkit.cli.errors.CLIError` with a one-line message that names
the option and, where possible, the fix, before any expensive work is done.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from diffusionkit.cli.errors import EXIT_USAGE, CLIError
from diffusionkit.cli.options import positive_int
from diffusionkit.limits import LimitError, check_sample_count

__all__ = [
    "HelpFormatter",
    "add_loading_arguments",
    "add_model_argument",
    "build_sampler",
    "chain_steps",
    "check_count",
    "check_local",
    "check_output",
    "device_of",
    "image_size_of",
    "recorded_image_size",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is None or False or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action) or text


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model``: a run folder, a ``save_pretrained`` folder or a Hub repo id."""
    parser.add_argument(
        "--model", required=True, metavar="PATH_OR_REPO", help="run folder or Hub repo id"
    )


def add_loading_arguments(
    parser: argparse.ArgumentParser, *, image_size_help: str, device_help: str
) -> None:
    """``--image-size``, ``--no-ema``, ``--device`` and ``--revision``."""
    parser.add_argument(
        "--image-size",
        type=positive_int(1),
        default=None,
        metavar="S",
        help=image_size_help,
    )
    parser.add_argument(
        "--no-ema", action="store_true", help="use the raw trained weights instead of the EMA"
    )
    parser.add_argument("--device", default="cpu", metavar="DEV", help=device_help)
    parser.add_argument(
        "--revision", default=None, metavar="REV", help="branch, tag or commit of a Hub repo"
    )


def recorded_image_size(model_ref: str) -> int | None:
    """The image size ``diffusionkit train`` recorded in a run folder, or ``None``."""
    from diffusionkit.cli.train import TRAIN_CONFIG

    saved = Path(model_ref) / TRAIN_CONFIG
    if not saved.is_file():
        return None
    try:
        size = json.loads(saved.read_text(encoding="utf-8")).get("image_size")
    except (OSError, json.JSONDecodeError, AttributeError) as error:
        raise CLIError(f"cannot read {saved}: {error}") from None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def image_size_of(model_ref: str, given: int | None) -> int:
    """The image size to use: ``given``, or the one recorded by ``diffusionkit train``."""
    size = given if given is not None else recorded_image_size(model_ref)
    if size is None:
        raise CLIError(
            f"{model_ref} does not record the image size it was trained at; pass --image-size",
            EXIT_USAGE,
        )
    return size


def check_local(model_ref: str) -> None:
    """Refuse a local folder that holds no exported model (an unfinished run, or no model)."""
    folder = Path(model_ref)
    if not folder.is_dir():
        return
    if not (folder / "config.json").is_file():
        from diffusionkit.training.checkpoint import CHECKPOINTS_DIRNAME, list_checkpoints

        if list_checkpoints(folder / CHECKPOINTS_DIRNAME):
            raise CLIError(
                f"{folder} holds an unfinished training run (checkpoints but no exported "
                f"model yet); finish it with: diffusionkit train --out {folder} --resume"
            )
        raise CLIError(f"{folder} holds no model (no config.json)")


def check_count(n: int, flag: str = "-n/--num") -> None:
    """Refuse more samples than :data:`~diffusionkit.limits.MAX_SAMPLE_COUNT`."""
    try:
        check_sample_count(n, flag)
    except LimitError as error:
        raise CLIError(str(error), EXIT_USAGE) from None


def build_sampler(name: str) -> Any:
    """The sampler registered as ``name``, with its defaults (the model's x0 processing
    applies to it as to every sampler)."""
    from diffusionkit.samplers import SAMPLERS

    try:
        return SAMPLERS.build(name)
    except (KeyError, ValueError) as error:
        raise CLIError(f"--sampler: {error.args[0]}", EXIT_USAGE) from None


def chain_steps(model: Any, sampler: Any, steps: int | None) -> int:
    """Timesteps the reverse chain visits for ``steps`` network calls (``None``: all ``T``).

    Raises:
        CLIError: ``steps`` asks for more calls than the sampler makes over ``T`` timesteps.
    """
    chosen = sampler or model.sampler
    visited = model.timesteps if steps is None else chosen.steps_for_calls(steps, True)
    if visited > model.timesteps:
        raise CLIError(
            f"--steps {steps}: more network calls than {chosen.name or chosen} makes over the "
            f"model's {model.timesteps} timesteps",
            EXIT_USAGE,
        )
    return int(visited)


def device_of(name: str) -> Any:
    """``torch.device(name)``, or a usage error naming ``--device``."""
    import torch

    try:
        return torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r} is not a device name", EXIT_USAGE) from None


def check_output(path: str | None, flag: str, example: str = "samples.png") -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CLIError(
            f"{flag} {target} is a folder; name the file to write, e.g. {target / example}",
            EXIT_USAGE,
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{flag} {target}: {parent} is a file, not a folder", EXIT_USAGE)
            break
