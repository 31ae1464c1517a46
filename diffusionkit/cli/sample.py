"""``diffusionkit sample``: draw a grid of samples (and a denoising GIF) from a trained model.

Conditional models sample with their conditions: ``--labels`` for a class-conditional model
(every class in turn by default), ``--cond`` for an image-conditional one (a conditioning
image, or a folder of them), and ``--guidance-scale`` for classifier-free guidance with
either. Conditions repeat to fill ``-n``: sample ``i`` gets condition ``i mod M`` of the ``M``
given, and ``-n`` defaults to ``M`` (to a multiple of the classes near 64 for ``--labels
all``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusionkit.cli.errors import EXIT_USAGE, CLIError
from diffusionkit.cli.model_options import (
    HelpFormatter,
    add_loading_arguments,
    add_model_argument,
    build_sampler,
    chain_steps,
    check_count,
    check_local,
    check_output,
    device_of,
    image_size_of,
)
from diffusionkit.cli.options import number, positive_int

__all__ = ["DEFAULT_COUNT", "Conditions", "add_parser", "image_size_of", "parse_labels", "run"]

#: samples drawn when neither -n nor the conditions say how many
DEFAULT_COUNT = 64
#: ``--labels`` value meaning every class in turn
ALL_LABELS = "all"


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
        formatter_class=HelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument(
        "-n",
        "--num",
        type=positive_int(1),
        default=None,
        metavar="N",
        help=f"number of images (default: {DEFAULT_COUNT}, or as many as the --labels list or "
        "the --cond folder holds; --labels all: a multiple of the classes near 64)",
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
        "--labels",
        type=parse_labels,
        default=None,
        metavar="L,L,...|all",
        help="class labels for a class-conditional model (trained with --class-conditional): "
        "'all' (each class in turn, one class per grid column; the default for such models), "
        "one label for every sample, or a comma-separated list repeated to fill -n; -1 is "
        "the null label (unconditional)",
    )
    parser.add_argument(
        "--cond",
        default=None,
        metavar="FILE_OR_FOLDER",
        help="conditioning images for an image-conditional model (trained with --cond-data): "
        "one image for every sample, or a folder whose images (in file-name order, read at "
        "the model's size as in training) are repeated to fill -n",
    )
    parser.add_argument(
        "--guidance-scale",
        type=number(0.0),
        default=None,
        metavar="W",
        help="classifier-free guidance (Ho & Salimans 2022) for a conditional model: "
        "out_u + W (out_c - out_u); 1 is plain conditional sampling (the default behaviour), "
        "0 unconditional, above 1 follows the condition more closely (each step then runs a "
        "batch of 2n)",
    )
    parser.add_argument(
        "--gif", default=None, metavar="FILE", help="also write the denoising chain as a GIF"
    )
    add_loading_arguments(
        parser,
        image_size_help="image size SxS (default: the size the run was trained at, from its "
        "train_config.json; required for Hub repos)",
        device_help="device to sample on",
    )
    return parser


def parse_labels(value: str) -> list[int] | str:
    """``--labels``: ``"all"``, or a comma-separated list of integers ``>= -1``."""
    text = value.strip().lower()
    if text == ALL_LABELS:
        return ALL_LABELS
    parts = [part for part in text.replace(" ", "").split(",") if part]
    try:
        labels = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'all' or comma-separated class numbers such as 3,3,7; got {value!r}"
        ) from None
    if not labels or min(labels) < -1:
        raise argparse.ArgumentTypeError(
            f"class numbers start at 0 (-1 is the null label); got {value!r}"
        )
    return labels


@dataclass
class Conditions:
    """What a sampling run is conditioned on, for ``n`` samples.

    Attributes:
        n: number of samples.
        labels: ``(n,)`` int64 labels, or ``None``.
        cond: ``(n, C_cond, H, W)`` conditioning images, or ``None``.
        columns: columns of the grid (one per class for ``--labels all``).
        described: a few words for the report line, e.g. ``"labels 0-9 in turn"``.
    """

    n: int
    labels: Any = None
    cond: Any = None
    columns: int | None = None
    described: str = ""


def _conditions(args: argparse.Namespace, net: Any, size: int) -> Conditions:
    """The labels and conditioning images of ``args`` for ``net``, checked, and ``-n``."""
    import torch

    classes = getattr(net, "num_classes", None)
    cond_channels = getattr(net, "cond_channels", 0) or 0
    labels = args.labels
    if labels is not None and not classes:
        raise CLIError(
            f"--labels: {args.model} is not class-conditional (train it with "
            "--class-conditional to choose classes)",
            EXIT_USAGE,
        )
    if args.cond is not None and not cond_channels:
        raise CLIError(
            f"--cond: {args.model} takes no conditioning images (train it with --cond-data)",
            EXIT_USAGE,
        )
    if cond_channels and args.cond is None:
        raise CLIError(
            f"{args.model} is image-conditional: pass its conditioning images with --cond "
            "FILE_OR_FOLDER (an image for every sample, or a folder of them)",
            EXIT_USAGE,
        )
    if args.guidance_scale is not None and not (classes or cond_channels):
        raise CLIError(
            f"--guidance-scale guides a conditional model, and {args.model} is unconditional",
            EXIT_USAGE,
        )
    out = Conditions(n=args.num or DEFAULT_COUNT)
    words = []
    if classes:
        labels = ALL_LABELS if labels is None else labels
        if labels == ALL_LABELS:
            out.n = args.num or classes * max(1, DEFAULT_COUNT // classes)
            out.labels = torch.arange(out.n) % classes
            out.columns = classes if classes <= out.n else None
            words.append(f"labels 0-{classes - 1} in turn")
        else:
            bad = [label for label in labels if label >= classes]
            if bad:
                raise CLIError(
                    f"--labels {','.join(map(str, bad))}: {args.model} has {classes} classes "
                    f"(0-{classes - 1}; -1 is the null label)",
                    EXIT_USAGE,
                )
            out.n = args.num or len(labels)
            given = torch.tensor(labels, dtype=torch.int64)
            out.labels = given.repeat(math.ceil(out.n / len(labels)))[: out.n]
            shown = ",".join(map(str, labels[:10])) + ("..." if len(labels) > 10 else "")
            words.append(f"labels {shown}")
    if cond_channels:
        images, where = _read_conds(Path(args.cond), size, cond_channels)
        if args.num is None:
            out.n = len(images)
        out.cond = images.repeat(math.ceil(out.n / len(images)), 1, 1, 1)[: out.n]
        words.append(f"conditioned on {where}")
    if args.guidance_scale is not None:
        words.append(f"guidance scale {args.guidance_scale:g}")
    out.described = ", ".join(words)
    return out


def _read_conds(path: Path, size: int, channels: int) -> tuple[Any, str]:
    """``((M, channels, size, size) images, a description)`` from a file or a folder."""
    import torch

    from diffusionkit.data.folder import find_images, load_image

    if path.is_dir():
        files = find_images(path)
        where = f"the {len(files)} images of {path}"
    elif path.is_file():
        files, where = [path], str(path)
    else:
        raise CLIError(f"--cond {path}: no such file or folder", EXIT_USAGE)
    return torch.stack([load_image(f, (size, size), channels) for f in files]), where


def run(args: argparse.Namespace) -> int:
    """Run ``diffusionkit sample``; returns the exit status."""
    check_output(args.out, "--out")
    check_output(args.gif, "--gif", "denoise.gif")
    import torch

    from diffusionkit import DenoiseDiffusion
    from diffusionkit.utils import FrameRecorder, save_gif, save_grid

    if args.num is not None:
        check_count(args.num)
    sampler = None if args.sampler is None else build_sampler(args.sampler)
    device = device_of(args.device)
    check_local(args.model)
    model = DenoiseDiffusion.from_pretrained(
        args.model, revision=args.revision, map_location=device, use_ema=not args.no_ema
    )
    if args.no_clip_x0:
        model.x0_processing = None
    size = image_size_of(args.model, args.image_size)
    steps = args.steps
    chosen = sampler or model.sampler
    chain = chain_steps(model, sampler, steps)
    channels = getattr(model.net, "in_channels", None) or 3
    try:
        model.check_shape((1, channels, size, size))
    except ValueError as error:
        raise CLIError(f"--image-size {size}: {error}", EXIT_USAGE) from None
    conditions = _conditions(args, model.net, size)
    check_count(conditions.n)
    shape = (conditions.n, channels, size, size)
    nrow = conditions.columns or max(1, round(math.sqrt(conditions.n)))
    recorder = FrameRecorder(chain, nrow=nrow) if args.gif else None
    samples = model.reverse_sample(
        shape,
        generator=torch.Generator().manual_seed(args.seed),
        sampler=sampler,
        steps=steps,
        clip=True,
        callback=recorder,
        labels=conditions.labels,
        cond=conditions.cond,
        guidance_scale=args.guidance_scale,
    )
    scale = max(1, 64 // size)
    out = save_grid(samples, args.out, nrow=nrow, scale=scale)
    print(
        f"wrote {out}: {conditions.n} samples {size}x{size}, {chosen}, "
        f"{steps or model.timesteps} network calls, seed {args.seed}"
        + (f", {conditions.described}" if conditions.described else "")
    )
    if recorder is not None:
        gif = save_gif(recorder.frames, args.gif, scale=scale)
        print(f"wrote {gif}: the denoising chain, {len(recorder.frames)} frames")
    return 0
