"""``diffusionkit train``: train a DDPM on built-in data or a folder of images.

Every option has one entry in :data:`OPTIONS` (name, converter, default, help); the same table
builds the ``argparse`` options, validates ``--config`` files, and records the resolved
settings as ``train_config.json`` in the run folder, from which ``--resume`` continues.
Settings are resolved in this order, later ones winning: built-in defaults, the run folder's
``train_config.json`` (with ``--resume``), the ``--config`` file, the command line.

Everything that can be checked is checked before anything is written: the options and their
limits (:mod:`diffusionkit.limits`), the device, the run folder (one writer at a time, see
:mod:`diffusionkit.training.lock`; no foreign files), and on ``--resume`` that the settings
which define the model (:data:`FIXED_ON_RESUME`) are the run's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusionkit.cli.errors import EXIT_USAGE, CLIError
from diffusionkit.cli.options import (
    choice,
    int_list,
    number,
    optional,
    positive_int,
    probability,
)

__all__ = [
    "DEFAULT_IMAGE_SIZES",
    "FIXED_ON_RESUME",
    "OPTIONS",
    "TRAIN_CONFIG",
    "add_parser",
    "resolve",
    "run",
]

#: name of the resolved settings file in a run folder
TRAIN_CONFIG = "train_config.json"

#: image size used when ``--image-size`` is not given, per built-in dataset (folders: 32)
DEFAULT_IMAGE_SIZES = {"digits": 16, "fashion-mnist": 28}
FOLDER_IMAGE_SIZE = 32


@dataclass(frozen=True)
class Option:
    """One ``train`` option: ``--<name with dashes>``, stored as ``name``."""

    name: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    group: str = "training"
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise argparse.ArgumentTypeError(f"must be a non-empty string, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {value!r}")


_SCHEDULES = ("linear", "cosine", "sigmoid")
_PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: every ``train`` option; the defaults train a recognisable digits model on 2 CPU cores in a
#: few minutes (see docs/guides/training.md for the measurements behind them)
OPTIONS: tuple[Option, ...] = (
    # data
    Option(
        "data",
        _text,
        None,
        "training images: 'digits' (scikit-learn's 8x8 digits, padded "
        "to 16x16), 'fashion-mnist' (28x28), or a folder of images (subfolders = classes)",
        "data",
        "DATA",
    ),
    Option(
        "image_size",
        optional(positive_int(1)),
        None,
        "image size S (SxS) the model is "
        "trained at; folders are resized and centre-cropped to it (default: 16 for digits, "
        "28 for fashion-mnist, 32 for folders)",
        "data",
        "S",
    ),
    Option(
        "channels",
        optional(choice("1", "3")),
        None,
        "1 (greyscale) or 3 (RGB) (default: 1 for the built-ins, 3 for folders)",
        "data",
        "C",
    ),
    Option(
        "cond_data",
        optional(_text),
        None,
        "a folder of conditioning images, one per training image, paired with --data (a "
        "folder) by relative file name, extensions aside: cond/a/001.png goes with "
        "data/a/001.jpg; read at --image-size like the images (a smaller one is upsampled) and "
        "given to the network beside the noisy image (super-resolution, colorization, any "
        "image-to-image task)",
        "data",
        "PATH",
    ),
    Option(
        "cond_channels",
        optional(choice("1", "3")),
        None,
        "1 (greyscale) or 3 (RGB) for the --cond-data images (default: --channels)",
        "data",
        "C",
    ),
    Option(
        "num_workers",
        positive_int(0),
        0,
        "worker processes that read images (0: in the "
        "training process; raise it for large folders of JPEGs)",
        "data",
        "N",
    ),
    # model
    Option("dim", positive_int(1), 16, "channels of the U-Net's first level", "model", "N"),
    Option(
        "dim_mults",
        int_list(1),
        [1, 2, 2],
        "channel multiplier of each U-Net level, "
        "comma-separated; the image size must be divisible by 2^(levels - 1)",
        "model",
        "M,M,...",
    ),
    Option(
        "attn_levels",
        int_list(0),
        [2],
        "0-based U-Net levels with self-attention, comma-separated, or 'none'",
        "model",
        "L,...",
    ),
    Option("n_blocks", positive_int(1), 1, "residual blocks per U-Net level", "model", "N"),
    Option(
        "groups",
        positive_int(1),
        8,
        "GroupNorm groups (must divide every level's channels)",
        "model",
        "G",
    ),
    Option("dropout", probability, 0.0, "dropout probability in the residual blocks", "model", "P"),
    Option(
        "class_conditional",
        _boolean,
        False,
        "a class-conditional model: the network gets each image's class (the built-ins' "
        "labels, or a folder's subfolders), and 'diffusionkit sample --labels' chooses them",
        "model",
        "BOOL",
    ),
    Option(
        "cond_drop_prob",
        optional(probability),
        None,
        "for conditional models (--class-conditional, --cond-data), the probability of "
        "training an example without its condition, which classifier-free guidance ('sample "
        "--guidance-scale') needs; 0 turns it off (default: 0.1 for conditional models; may "
        "change on --resume)",
        "model",
        "P",
    ),
    Option(
        "schedule",
        choice(*_SCHEDULES),
        "cosine",
        "noise schedule: cosine (Nichol & Dhariwal 2021), linear (Ho et al. 2020, scaled to "
        "the number of timesteps) or sigmoid (Jabri et al. 2022; train it with --prediction v, "
        "which the quality benchmark measured best on small images)",
        "model",
        "NAME",
    ),
    Option("timesteps", positive_int(2, 100_000), 250, "diffusion steps T", "model", "T"),
    Option(
        "clip_x0",
        _boolean,
        True,
        "clip the model's estimate of the clean image to [-1, 1] at each sampling step, "
        "whichever sampler runs (saved with the model; 'false' samples without clipping)",
        "model",
        "BOOL",
    ),
    Option(
        "prediction",
        choice("eps", "x0", "v"),
        "eps",
        "what the network predicts: the noise eps, the clean image x0, or the velocity v",
        "model",
        "KIND",
    ),
    Option(
        "learned_variance",
        _boolean,
        False,
        "learn the reverse process's variance (improved DDPM, Nichol & Dhariwal 2021): the "
        "network outputs twice the image channels and trains with the hybrid loss "
        "L_simple + 0.001 L_vlb; lowers the bits/dim of 'diffusionkit eval --nll'",
        "model",
        "BOOL",
    ),
    # optimisation
    Option("steps", positive_int(1), 2000, "optimizer steps of the whole run", metavar="N"),
    Option(
        "batch_size",
        positive_int(1),
        64,
        "images per optimizer step (over all processes and accumulation steps)",
        metavar="B",
    ),
    Option(
        "lr", number(0.0, 1.0, open_min=True), 2e-3, "peak learning rate of AdamW", metavar="LR"
    ),
    Option(
        "warmup_steps", positive_int(0), 100, "steps of linear learning-rate warm-up", metavar="N"
    ),
    Option(
        "lr_decay",
        choice("constant", "cosine"),
        "constant",
        "learning rate after the warm-up: constant, or cosine decay to 0 at the last step",
        metavar="KIND",
    ),
    Option("weight_decay", number(0.0), 0.0, "AdamW weight decay", metavar="W"),
    Option(
        "grad_clip",
        optional(number(0.0, open_min=True)),
        1.0,
        "clip the gradient norm to this ('none': no clipping)",
        metavar="NORM",
    ),
    Option(
        "grad_accum",
        positive_int(1),
        1,
        "micro-batches per optimizer step (gradient accumulation; divides --batch-size)",
        metavar="N",
    ),
    Option(
        "ema_decay",
        number(0.0, 1.0, open_max=True),
        0.999,
        "decay of the weights' "
        "exponential moving average, warmed up as min(decay, (1 + n) / (10 + n)); "
        "samples and the exported model use the EMA weights",
        metavar="D",
    ),
    Option(
        "precision",
        choice(*_PRECISIONS),
        "auto",
        "forward-pass precision: auto (fp32 on "
        "CPUs, bf16 on GPUs that support it), fp32, bf16, or fp16 (with loss scaling)",
        metavar="P",
    ),
    Option(
        "compile",
        _boolean,
        False,
        "compile the network with torch.compile: opt-in, since compiling takes a minute or "
        "more before the first step and pays off only on long runs",
        metavar="BOOL",
    ),
    Option(
        "device",
        _text,
        "auto",
        "device: auto (cuda if available), cpu, cuda, cuda:1, ...",
        metavar="DEV",
    ),
    Option(
        "threads",
        optional(positive_int(1)),
        None,
        "CPU threads torch may use (default: torch's choice, one per core; use fewer when "
        "other programs keep cores busy: competing OpenMP threads slow each other down)",
        metavar="N",
    ),
    Option(
        "seed",
        positive_int(0),
        0,
        "seed of initialisation, data order, noise and samples",
        metavar="S",
    ),
    # outputs
    Option(
        "checkpoint_every",
        positive_int(0),
        500,
        "write a checkpoint every N steps (0: only at the end)",
        "outputs",
        "N",
    ),
    Option(
        "keep_checkpoints",
        positive_int(1),
        2,
        "how many of the newest checkpoints to keep",
        "outputs",
        "K",
    ),
    Option(
        "sample_every",
        positive_int(0),
        500,
        "write samples/step-N.png every N steps, from fixed seeds (0: only at the end)",
        "outputs",
        "N",
    ),
    Option("sample_count", positive_int(1), 64, "images per sample grid", "outputs", "N"),
    Option(
        "sample_steps",
        optional(positive_int(1)),
        None,
        "reverse steps when sampling grids (default: all T)",
        "outputs",
        "N",
    ),
    Option("log_every", positive_int(1), 10, "steps between metrics.jsonl records", "outputs", "N"),
    Option(
        "progress",
        _boolean,
        True,
        "show a progress bar",
        "outputs",
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}
DEFAULTS: dict[str, Any] = {option.name: option.default for option in OPTIONS}

#: settings that define the model, the objective or the random streams of a run: ``--resume``
#: refuses to change them (the others may change, take effect, and are reported). ``--data``
#: may change (a moved folder) when the data keeps its size, classes and image shape, which
#: the checkpoint checks.
FIXED_ON_RESUME = (
    "image_size", "channels", "dim", "dim_mults", "attn_levels", "n_blocks", "groups",
    "dropout", "schedule", "timesteps", "prediction", "seed", "class_conditional",
    "cond_channels", "learned_variance",
)  # fmt: skip
#: condition dropout of conditional models unless --cond-drop-prob says otherwise (Ho &
#: Salimans 2022 use 0.1 to 0.2)
DEFAULT_COND_DROP_PROB = 0.1
# settings about how this process runs, not about the run: not reported as changes
_NOT_REPORTED = frozenset({"progress", "threads", "num_workers"})

#: ``--resume`` values besides a checkpoint folder
RESUME_NEWEST = "newest"
RESUME_NEWEST_VALID = "newest-valid"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="train a model",
        description=(
            "Train a DDPM and write a run folder: checkpoints/ (resumable), samples/ (grids "
            "during training), metrics.jsonl, samples.png and denoise.gif (the final model's "
            "samples and its denoising chain), train_config.json, and the model itself "
            "(config.json, model.safetensors, ema.safetensors), which "
            "DenoiseDiffusion.from_pretrained(OUT) and 'diffusionkit sample --model OUT' load."
        ),
        epilog=(
            "Settings resolve as: defaults < the run's train_config.json (with --resume) < "
            "--config FILE < command line. Under 'torchrun --nproc_per_node=N' the same command "
            "trains on N processes."
        ),
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="the run folder, e.g. runs/digits"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help='JSON file of settings, keyed by option name (e.g. {"steps": 500, '
        '"dim_mults": [1, 2]}); command-line options override it',
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=RESUME_NEWEST,
        metavar="WHICH",
        help="continue the run in --out with its saved settings, from: 'newest' (the default "
        "when WHICH is left out; refused if that checkpoint is damaged), 'newest-valid' (the "
        "newest checkpoint whose files match their checksums, skipping damaged ones), or a "
        "checkpoint folder (newer checkpoints of the run are then moved to "
        "checkpoints/abandoned/). Settings that define the model (size, channels, network, "
        "schedule, timesteps, prediction, seed) cannot change; the others may and are reported",
    )
    groups = {
        "data": parser.add_argument_group("data"),
        "model": parser.add_argument_group("model"),
        "training": parser.add_argument_group("training"),
        "outputs": parser.add_argument_group("outputs"),
    }
    for option in OPTIONS:
        group = groups[option.group]
        shown = option.default
        if isinstance(shown, list):
            shown = ",".join(str(v) for v in shown) or "none"
        help_text = option.help
        if shown is not None and "default" not in help_text:
            help_text += f" (default: {shown})"
        if option.name == "progress":
            group.add_argument(
                "--no-progress",
                dest="progress",
                action="store_false",
                help="hide the progress bar",
            )
            continue
        if option.convert is _boolean:  # "--flag" alone means true; "--flag false" works too
            group.add_argument(
                option.flag, dest=option.name, type=_boolean, nargs="?", const=True,
                metavar=option.metavar, help=help_text,
            )  # fmt: skip
            continue
        group.add_argument(
            option.flag, dest=option.name, type=option.convert, metavar=option.metavar,
            help=help_text,
        )  # fmt: skip
    return parser


def _from_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Validate settings read from a JSON file (keys may use '-' or '_')."""
    if not isinstance(values, dict):
        raise CLIError(f"{source} must hold a JSON object of settings", EXIT_USAGE)
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        option = _BY_NAME.get(name)
        if option is None:
            valid = ", ".join(sorted(_BY_NAME))
            raise CLIError(f"{source}: unknown setting {key!r}; valid: {valid}", EXIT_USAGE)
        try:
            out[name] = option.convert(value)
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise CLIError(f"{source}: setting {key!r} {error}", EXIT_USAGE) from None
    return out


def _read_json(path: Path, what: str) -> Any:
    from diffusionkit.utils.files import read_regular

    try:
        return json.loads(read_regular(path, what))
    except FileNotFoundError:
        raise CLIError(f"{what} {path} does not exist", EXIT_USAGE) from None
    except (OSError, UnicodeDecodeError) as error:
        raise CLIError(f"cannot read {what} {path}: {error}", EXIT_USAGE) from None
    except json.JSONDecodeError as error:
        raise CLIError(f"{what} {path} is not valid JSON: {error}", EXIT_USAGE) from None


def _resume_choice(args: argparse.Namespace) -> str | None:
    """``None`` (a new run), ``"newest"``, ``"newest-valid"`` or a checkpoint folder."""
    which = getattr(args, "resume", None)
    if which is None or which in (RESUME_NEWEST, RESUME_NEWEST_VALID):
        return which
    if not Path(which).is_dir():
        raise CLIError(
            f"--resume {which!r}: expected 'newest', 'newest-valid' or a checkpoint folder, and "
            "no such folder exists",
            EXIT_USAGE,
        )
    return str(which)


def _resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(settings, the run's saved settings or None)``; see :func:`resolve`."""
    given = {k: v for k, v in vars(args).items() if k in _BY_NAME}
    settings = dict(DEFAULTS)
    out = Path(args.out)
    saved: dict[str, Any] | None = None
    if _resume_choice(args) is not None:
        saved_file = out / TRAIN_CONFIG
        if not saved_file.exists():
            raise CLIError(
                f"--resume: {out} holds no run to resume (no {TRAIN_CONFIG}); start it "
                "without --resume",
                EXIT_USAGE,
            )
        saved = _from_mapping(_read_json(saved_file, "run settings"), str(saved_file))
        settings.update(saved)
    config = getattr(args, "config", None)
    if config is not None:
        given = {**_from_mapping(_read_json(Path(config), "--config file"), config), **given}
    settings.update(given)
    if settings["data"] is None:
        raise CLIError("--data is required (digits, fashion-mnist or a folder)", EXIT_USAGE)
    _check_model_settings(settings)
    if saved is not None:
        saved = _check_fixed(saved, settings, out)
    _check_cond_drop(settings)
    return settings, saved


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a ``train`` command, merged and checked (see the module docstring)."""
    return _resolve(args)[0]


def _check_fixed(saved: dict[str, Any], settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """Refuse a ``--resume`` that changes a setting of :data:`FIXED_ON_RESUME`.

    Returns:
        The run's own settings, resolved as ``settings`` are (so that values compare equal,
        ``1`` and ``"1"`` alike), for the report of what changed.
    """
    # the run's own resolved values (image size and channels were filled in when it started)
    run = {**DEFAULTS, **saved}
    _check_model_settings(run)
    changed = [name for name in FIXED_ON_RESUME if run[name] != settings[name]]
    if changed:
        what = "; ".join(
            f"{_BY_NAME[n].flag} {_shown(settings[n])} (the run has {_shown(run[n])})"
            for n in changed
        )
        raise CLIError(
            f"--resume cannot change settings that define the model or the objective: {what}. "
            f"Resume without them to continue the run in {out}, or start a new run with "
            "another --out",
            EXIT_USAGE,
        )
    return run


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


def _changes(saved: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    return [
        f"{_BY_NAME[n].flag} {_shown(saved[n])} -> {_shown(settings[n])}"
        for n in _BY_NAME
        if n in saved and n not in _NOT_REPORTED and saved[n] != settings[n]
    ]


def _data_key(data: str) -> str | None:
    from diffusionkit.data import BUILTIN_DATASETS

    key = data.strip().lower().replace("_", "-")
    return key if key in BUILTIN_DATASETS else None


def _check_model_settings(settings: dict[str, Any]) -> None:
    from diffusionkit import limits

    levels = len(settings["dim_mults"])
    if levels < 1:
        raise CLIError("--dim-mults needs at least one level", EXIT_USAGE)
    try:
        limits.check_levels(levels, "--dim-mults")
        for mult in settings["dim_mults"]:
            limits.check_width(settings["dim"] * mult, "--dim x --dim-mults")
        limits.check_timesteps(settings["timesteps"], "--timesteps")
        limits.check_sample_count(settings["sample_count"], "--sample-count")
        if settings["image_size"] is not None:
            limits.check_image_size(settings["image_size"], "--image-size")
    except limits.LimitError as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    bad = [level for level in settings["attn_levels"] if level >= levels]
    if bad:
        raise CLIError(
            f"--attn-levels {bad} out of range: the U-Net has {levels} levels (0 .. {levels - 1})",
            EXIT_USAGE,
        )
    key = _data_key(settings["data"])
    if settings["image_size"] is None:
        settings["image_size"] = DEFAULT_IMAGE_SIZES.get(key or "", FOLDER_IMAGE_SIZE)
    if settings["channels"] is None:
        settings["channels"] = 1 if key else 3
    settings["channels"] = int(settings["channels"])
    _check_conditioning(settings, key)
    native = _native_size(key)
    if native is not None:
        try:
            limits.check_upscale(settings["image_size"], native, key or "", "--image-size")
        except limits.LimitError as error:
            raise CLIError(str(error), EXIT_USAGE) from None
    multiple = 2 ** (levels - 1)
    size = settings["image_size"]
    if size % multiple:
        raise CLIError(
            f"--image-size {size} does not fit the U-Net: with {levels} levels (--dim-mults "
            f"{','.join(map(str, settings['dim_mults']))}) the size must be a multiple of "
            f"{multiple}, e.g. {max(multiple, size - size % multiple)} or "
            f"{size - size % multiple + multiple}",
            EXIT_USAGE,
        )
    channels = [settings["dim"] * m for m in settings["dim_mults"]]
    if any(c % settings["groups"] for c in {settings["dim"], *channels}):
        raise CLIError(
            f"--groups {settings['groups']} must divide every level's channels {channels}",
            EXIT_USAGE,
        )
    if settings["sample_steps"] is not None and settings["sample_steps"] > settings["timesteps"]:
        raise CLIError(
            f"--sample-steps {settings['sample_steps']} exceeds --timesteps "
            f"{settings['timesteps']}",
            EXIT_USAGE,
        )
    if settings["batch_size"] % settings["grad_accum"]:
        raise CLIError(
            f"--batch-size {settings['batch_size']} must be divisible by --grad-accum "
            f"{settings['grad_accum']}",
            EXIT_USAGE,
        )


def _check_conditioning(settings: dict[str, Any], key: str | None) -> None:
    """Check and fill in the conditioning settings: ``cond_channels`` (``None`` without
    ``--cond-data``) and ``cond_drop_prob`` (its default for conditional models)."""
    if settings["cond_data"] is None:
        if settings["cond_channels"] is not None:
            raise CLIError(
                "--cond-channels describes the --cond-data images: pass --cond-data too",
                EXIT_USAGE,
            )
    else:
        if key is not None:
            raise CLIError(
                f"--cond-data pairs conditioning images with the --data images by file name, so "
                f"--data must be a folder, not the built-in {key!r}: write its images to a "
                "folder first (examples/super_resolution.py does so for Fashion-MNIST)",
                EXIT_USAGE,
            )
        settings["cond_channels"] = int(settings["cond_channels"] or settings["channels"])
    if settings["cond_drop_prob"] is None:
        settings["cond_drop_prob"] = DEFAULT_COND_DROP_PROB if _conditional(settings) else 0.0


def _conditional(settings: dict[str, Any]) -> bool:
    return bool(settings["class_conditional"] or settings["cond_data"] is not None)


def _check_cond_drop(settings: dict[str, Any]) -> None:
    """Refuse a condition dropout for a model without conditions (after the resume checks,
    which name a changed --class-conditional or --cond-data first)."""
    if settings["cond_drop_prob"] > 0 and not _conditional(settings):
        raise CLIError(
            f"--cond-drop-prob {settings['cond_drop_prob']} drops the condition of a conditional "
            "model: add --class-conditional or --cond-data, or leave it out",
            EXIT_USAGE,
        )


def _native_size(key: str | None) -> int | None:
    """The side of a built-in dataset's own images."""
    from diffusionkit.data import digits, fashion_mnist

    return {"digits": digits.NATIVE_SIZE, "fashion-mnist": fashion_mnist.NATIVE_SIZE}.get(key or "")


def build_model(settings: dict[str, Any], num_classes: int | None = None) -> Any:
    """The ``DenoiseDiffusion`` described by ``settings``.

    Args:
        settings: resolved ``train`` settings.
        num_classes: the data's number of classes, for ``--class-conditional``.
    """
    import torch

    from diffusionkit import ClipX0, DenoiseDiffusion, UNet
    from diffusionkit.schedules import SCHEDULES

    torch.manual_seed(settings["seed"])
    levels = len(settings["dim_mults"])
    learned_variance = bool(settings["learned_variance"])
    net = UNet(
        in_channels=settings["channels"],
        out_channels=settings["channels"] * (2 if learned_variance else 1),
        dim=settings["dim"],
        dim_mults=settings["dim_mults"],
        attns=[level in settings["attn_levels"] for level in range(levels)],
        n_blocks=settings["n_blocks"],
        groups=settings["groups"],
        mid_attn=bool(settings["attn_levels"]),
        dropout=settings["dropout"],
        num_classes=num_classes if settings["class_conditional"] else None,
        cond_channels=settings["cond_channels"] or 0,
    )
    # Clipping x0_hat to [-1, 1] at each reverse step (as improved-diffusion and lucidrains
    # sample by default) matters with the cosine schedule: its last beta is 0.999, so the
    # first reverse step multiplies the network's error by 1 / sqrt(1 - 0.999) = 32. Measured
    # on the default digits model: 10-40% blank samples and a Frechet distance of 7.9
    # without clipping, none and 1.6 with it. The clipping is the model's x0_processing, saved
    # with it, so every sampler respects it, also one chosen by name at sampling time.
    return DenoiseDiffusion(
        net,
        SCHEDULES.build(settings["schedule"], {"timesteps": settings["timesteps"]}),
        prediction=settings["prediction"],
        x0_processing=ClipX0() if settings["clip_x0"] else None,
        learned_variance=learned_variance,
    )


def load_data(settings: dict[str, Any]) -> Any:
    """The training dataset of ``settings``, with image folders checked up front: their
    files readable, their pairs complete (``--cond-data``), their classes present
    (``--class-conditional``)."""
    from diffusionkit.data import ImageFolderDataset, PairedFolderDataset, load_dataset

    dataset = load_dataset(
        settings["data"],
        image_size=settings["image_size"],
        channels=settings["channels"],
        cond=settings["cond_data"],
        cond_channels=settings["cond_channels"],
    )
    if settings["class_conditional"] and dataset.num_classes is None:
        raise CLIError(
            f"--class-conditional needs labelled images, and {settings['data']} has none: put "
            "the images of each class in a subfolder of their own (every image in one, the "
            "subfolder names are the classes), or leave out --class-conditional",
            EXIT_USAGE,
        )
    if isinstance(dataset, ImageFolderDataset | PairedFolderDataset):
        _check_image_files(dataset)
    return dataset


def _check_image_files(dataset: Any) -> None:
    """Open every file's header (cheap) and decode the first image, so that a broken file is
    reported before training starts rather than mid-run."""
    from PIL import Image, UnidentifiedImageError

    from diffusionkit.utils.files import open_regular

    for path in [*dataset.files, *getattr(dataset, "cond_files", [])]:
        try:
            with open_regular(path, "image file") as f, Image.open(f) as image:
                image.size  # noqa: B018 - reading the header is the check
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            raise CLIError(f"cannot read image file {path}: {error}") from None
    dataset[0]


def _check_device(name: str) -> Any:
    """The ``torch.device`` to train on (``None`` for auto), refusing one that cannot train
    here before anything is written."""
    import torch

    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r} is not a device name", EXIT_USAGE) from None
    problem = None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            problem = "this machine has no CUDA GPU PyTorch can use"
        elif device.index is not None and device.index >= count:
            problem = f"this machine has {count} CUDA GPU{'s' if count > 1 else ''}"
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            problem = "MPS (Apple GPUs) is not available here"
    elif device.type != "cpu":
        problem = f"training runs on cpu, cuda or mps, not on {device.type!r}"
    if problem:
        raise CLIError(f"--device {name}: {problem}; use --device cpu or auto", EXIT_USAGE)
    return device


def _check_run_folder(out: Path, resume: str | None) -> None:
    from diffusionkit.training.checkpoint import CHECKPOINTS_DIRNAME, list_checkpoints
    from diffusionkit.training.run_folder import RunFolderError, check_run_folder

    existing = list_checkpoints(out / CHECKPOINTS_DIRNAME)
    if resume in (RESUME_NEWEST, RESUME_NEWEST_VALID) and not existing:
        raise CLIError(f"--resume: {out} has no checkpoint to resume from", EXIT_USAGE)
    if resume is None and existing:
        raise CLIError(
            f"{out} already holds a training run; pass --resume to continue it, or choose "
            "another --out",
            EXIT_USAGE,
        )
    try:
        check_run_folder(out, new_run=False)  # nothing foreign, whether new or resumed
    except RunFolderError as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    if resume is None and (out / TRAIN_CONFIG).exists():
        raise CLIError(
            f"{out} holds the start of a run that wrote no checkpoint ({TRAIN_CONFIG}, no "
            f"checkpoints/): nothing in it can be resumed; delete the folder or choose another "
            "--out",
            EXIT_USAGE,
        )


@contextlib.contextmanager
def _notes_on_stderr() -> Iterator[None]:
    """Show the trainer's :class:`TrainingWarning` notes as one ``note:`` line each."""
    from diffusionkit.training.errors import TrainingWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", TrainingWarning)
        show = warnings.showwarning

        def one_line(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            if issubclass(category, TrainingWarning):
                sys.stderr.write(f"diffusionkit train: note: {message}\n")
            else:
                show(message, category, *args, **kwargs)

        warnings.showwarning = one_line
        yield


def run(args: argparse.Namespace) -> int:
    """Run ``diffusionkit train``; returns the exit status."""
    settings, saved = _resolve(args)
    out = Path(args.out)
    resume = _resume_choice(args)
    device = _check_device(settings["device"])

    from diffusionkit.training.distributed import launch_rank
    from diffusionkit.training.lock import RunLockedError, run_lock

    with _notes_on_stderr():
        try:
            with run_lock(out, rank=launch_rank()) as lock:
                if lock is not None and lock.stale_note():
                    sys.stderr.write(f"diffusionkit train: note: {lock.stale_note()}\n")
                return _train(args, settings, saved, out, resume, device)
        except RunLockedError as error:
            raise CLIError(str(error)) from None


def _train(
    args: argparse.Namespace,
    settings: dict[str, Any],
    saved: dict[str, Any] | None,
    out: Path,
    resume: str | None,
    device: Any,
) -> int:
    """The run itself, with the run folder locked."""
    _check_run_folder(out, resume)

    import torch

    from diffusionkit.limits import LimitError
    from diffusionkit.training import Trainer
    from diffusionkit.training.checkpoint import CheckpointCorruptError, CheckpointWriteError
    from diffusionkit.utils.atomic import atomic_write_text

    if settings["threads"] is not None:
        torch.set_num_threads(settings["threads"])
    precision = None if settings["precision"] == "auto" else settings["precision"]
    dataset = load_data(settings)
    model = build_model(settings, dataset.num_classes)
    try:
        trainer = Trainer(
            model,
            dataset,
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            steps=settings["steps"],
            out_dir=out,
            warmup_steps=settings["warmup_steps"],
            lr_decay=settings["lr_decay"],
            weight_decay=settings["weight_decay"],
            grad_clip=settings["grad_clip"],
            grad_accum=settings["grad_accum"],
            ema_decay=settings["ema_decay"],
            precision=precision,
            device=device,
            seed=settings["seed"],
            checkpoint_every=settings["checkpoint_every"],
            keep_checkpoints=settings["keep_checkpoints"],
            sample_every=settings["sample_every"],
            sample_count=settings["sample_count"],
            sample_steps=settings["sample_steps"],
            log_every=settings["log_every"],
            cond_drop_prob=settings["cond_drop_prob"],
            num_workers=settings["num_workers"],
            progress=settings["progress"],
            compile=settings["compile"],
        )
    except LimitError as error:
        raise CLIError(f"{error} (--batch-size, --grad-accum, --image-size, --dim)") from None
    try:
        main = trainer.dist.is_main
        if resume is not None:
            where = out if resume in (RESUME_NEWEST, RESUME_NEWEST_VALID) else Path(resume)
            try:
                trainer.resume(where, fallback=resume == RESUME_NEWEST_VALID)
            except CheckpointCorruptError as error:
                raise CLIError(_damaged_message(error, out)) from None
        trainer.claim_out_dir()
        if main:
            atomic_write_text(out / TRAIN_CONFIG, json.dumps(settings, indent=2) + "\n")
            _print_start(trainer, settings, saved, torch.get_num_threads())
        result = trainer.train()
    except KeyboardInterrupt:
        kept = trainer.last_checkpoint
        raise CLIError(
            f"interrupted at step {trainer.step}; "
            + (
                f"the newest checkpoint ({kept.name}) is kept: continue with "
                f"diffusionkit train --out {os.fspath(out)} --resume"
                if kept is not None
                else "no checkpoint had been written yet"
            ),
            130,
        ) from None
    except CheckpointWriteError as error:
        raise CLIError(f"{error} (diffusionkit train --out {os.fspath(out)} --resume)") from None
    finally:
        trainer.close()
    if main:
        minutes = result.seconds / 60
        loss = "n/a" if math.isnan(result.loss) else f"{result.loss:.4f}"
        print(f"done: {result.steps} steps in {minutes:.1f} min, final loss {loss}")
        print(f"  samples:    {result.samples}")
        print(f"  denoising:  {result.gif}")
        print(f"  checkpoint: {result.checkpoint}")
        print(
            f"  model:      {out}  (diffusionkit sample --model {os.fspath(out)}, or "
            f"DenoiseDiffusion.from_pretrained({os.fspath(out)!r}))"
        )
    return 0


def _damaged_message(error: Any, out: Path) -> str:
    """The message for a damaged checkpoint on ``--resume``, naming the choices."""
    message = f"checkpoint {error.path} is damaged: {error.problem}"
    if not error.valid:
        return f"{message}; no valid checkpoint to resume from in {out}"
    return (
        f"{message}; the newest valid checkpoint is {error.valid[0]}: resume from it with "
        f"--resume {RESUME_NEWEST_VALID} (or --resume {error.valid[0]})"
    )


def _print_start(
    trainer: Any, settings: dict[str, Any], saved: dict[str, Any] | None, threads: int
) -> None:
    params = sum(p.numel() for p in trainer.diffusion.net.parameters())
    size = settings["image_size"]
    print(
        f"training {params / 1e6:.2f}M-parameter U-Net on {len(trainer.dataset)} images "
        f"({settings['data']}, {size}x{size}) for {settings['steps']} steps on "
        f"{trainer.device} ({trainer.precision.value}, {threads} thread"
        f"{'s' if threads > 1 else ''}"
        f"{f', {trainer.dist.world_size} processes' if trainer.dist.enabled else ''})"
        + (f", resuming at step {trainer.step}" if trainer.resume_report else ""),
        flush=True,
    )
    conditions = []
    if settings["class_conditional"]:
        conditions.append(f"class-conditional ({trainer.dataset.num_classes} classes)")
    if settings["cond_data"] is not None:
        conditions.append(
            f"conditioned on the images of {settings['cond_data']} "
            f"({settings['cond_channels']} channel{'s' if settings['cond_channels'] > 1 else ''})"
        )
    if conditions:
        print(
            f"{' and '.join(conditions)}, condition dropped for "
            f"{settings['cond_drop_prob']:.0%} of the examples",
            flush=True,
        )
    print(f"memory: {trainer.memory.describe()}", flush=True)
    report = trainer.resume_report
    if report is not None:
        print(f"resumed from {report.checkpoint}", flush=True)
        changes = _changes(saved or {}, settings)
        if changes:
            print(f"changed on resume: {', '.join(changes)}", flush=True)
