"""``diffusionkit sample``: draw a grid of samples (and a denoising GIF) from a trained model."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from diffusionkit.cli.errors import EXIT_USAGE, CLIError
from diffusionkit.cli.options import positive_int
from diffusionkit.limits import LimitError, check_sample_count

__all__ = ["add_parser", "image_size_of", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sample`` subcommand to ``subparsers``."""
    from diffusionkit.samplers import SAMPLERS

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sample",
        help="draw samples from a trained model",
        description=(
            "Sample images from a trained model (a run folder written by 'diffusionkit train', "
            "any folder written by save_pretrained, or a Hub repo such as user/model) and "
            "write them as one grid image, optionally with a GIF of the denoising chain. "
            "The EMA weights are used when the model has them."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, metavar="PATH_OR_REPO", help="run folder or Hub repo id"
    )
    parser.add_argument(
        "-n", "--num", type=positive_int(1), default=64, metavar="N", help="number of images"
    )
    parser.add_argument(
        "--out", default="samples.png", metavar="FILE", help="grid image to write (PNG)"
    )
    names = ", ".join(n for n in SAMPLERS.names() if n.islower())
    parser.add_argument(
        "--sampler",
        default=None,
        metavar="NAME",
        help=f"solver of the reverse process: {names} (default: the model's own sampler, "
        "saved with it). For few steps, see docs/guides/choosing-a-sampler.md",
    )
    parser.add_argument(
        "--no-clip-x0",
        action="store_true",
        help="sample without the model's own processing of the estimate of the clean image "
        "(clipping to [-1, 1] at each step, which models trained by 'diffusionkit train' have; "
        "it avoids blank samples with cosine schedules)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int(1),
        default=None,
        metavar="S",
        help="network calls (fewer than the model's T respaces the schedule; heun makes two "
        "per step but the last; default: one per timestep, all T)",
    )
    parser.add_argument("--seed", type=positive_int(0), default=0, help="random seed")
    parser.add_argument(
        "--gif", default=None, metavar="FILE", help="also write the denoising chain as a GIF"
    )
    parser.add_argument(
        "--image-size",
        type=positive_int(1),
        default=None,
        metavar="S",
        help="image size SxS (default: the size the run was trained at, from its "
        "train_config.json; required for Hub repos)",
    )
    parser.add_argument(
        "--no-ema", action="store_true", help="use the raw trained weights instead of the EMA"
    )
    parser.add_argument("--device", default="cpu", metavar="DEV", help="device to sample on")
    parser.add_argument(
        "--revision", default=None, metavar="REV", help="branch, tag or commit of a Hub repo"
    )
    return parser


def image_size_of(model_ref: str, given: int | None) -> int:
    """The image size to sample at: ``given``, or the one recorded by ``diffusionkit train``."""
    if given is not None:
        return given
    from diffusionkit.cli.train import TRAIN_CONFIG

    saved = Path(model_ref) / TRAIN_CONFIG
    if saved.is_file():
        try:
            size = json.loads(saved.read_text(encoding="utf-8")).get("image_size")
        except (OSError, json.JSONDecodeError) as error:
            raise CLIError(f"cannot read {saved}: {error}") from None
        if isinstance(size, int) and size > 0:
            return size
    raise CLIError(
        f"{model_ref} does not record the image size it was trained at; pass --image-size",
        EXIT_USAGE,
    )


def _check_local(model_ref: str) -> None:
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


def _build_sampler(name: str) -> Any:
    """The sampler registered as ``name``, with its defaults (the model's x0 processing
    applies to it as to every sampler)."""
    from diffusionkit.samplers import SAMPLERS

    try:
        return SAMPLERS.build(name)
    except (KeyError, ValueError) as error:
        raise CLIError(f"--sampler: {error.args[0]}", EXIT_USAGE) from None


def _check_output(path: str | None, flag: str) -> None:
    """Refuse an output path that cannot be written, before any sampling is done."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CLIError(
            f"{flag} {target} is a folder; name the file to write, e.g. {target / 'samples.png'}",
            EXIT_USAGE,
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{flag} {target}: {parent} is a file, not a folder", EXIT_USAGE)
            break


def run(args: argparse.Namespace) -> int:
    """Run ``diffusionkit sample``; returns the exit status."""
    _check_output(args.out, "--out")
    _check_output(args.gif, "--gif")
    import torch

    from diffusionkit import DenoiseDiffusion
    from diffusionkit.utils import FrameRecorder, save_gif, save_grid

    try:
        check_sample_count(args.num, "-n/--num")
    except LimitError as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    sampler = None if args.sampler is None else _build_sampler(args.sampler)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CLIError(f"--device {args.device!r} is not a device name", EXIT_USAGE) from None
    _check_local(args.model)
    model = DenoiseDiffusion.from_pretrained(
        args.model, revision=args.revision, map_location=device, use_ema=not args.no_ema
    )
    if args.no_clip_x0:
        model.x0_processing = None
    size = image_size_of(args.model, args.image_size)
    steps = args.steps
    chosen = sampler or model.sampler
    chain_steps = model.timesteps if steps is None else chosen.steps_for_calls(steps, True)
    if chain_steps > model.timesteps:
        raise CLIError(
            f"--steps {steps}: more network calls than {chosen.name or chosen} makes over the "
            f"model's {model.timesteps} timesteps",
            EXIT_USAGE,
        )
    channels = getattr(model.net, "in_channels", None) or 3
    shape = (args.num, channels, size, size)
    try:
        model.check_shape(shape)
    except ValueError as error:
        raise CLIError(f"--image-size {size}: {error}", EXIT_USAGE) from None
    nrow = max(1, round(math.sqrt(args.num)))
    recorder = FrameRecorder(chain_steps, nrow=nrow) if args.gif else None
    samples = model.reverse_sample(
        shape,
        generator=torch.Generator().manual_seed(args.seed),
        sampler=sampler,
        steps=steps,
        clip=True,
        callback=recorder,
    )
    scale = max(1, 64 // size)
    out = save_grid(samples, args.out, nrow=nrow, scale=scale)
    print(
        f"wrote {out}: {args.num} samples {size}x{size}, {chosen}, "
        f"{steps or model.timesteps} network calls, seed {args.seed}"
    )
    if recorder is not None:
        gif = save_gif(recorder.frames, args.gif, scale=scale)
        print(f"wrote {gif}: the denoising chain, {len(recorder.frames)} frames")
    return 0
