"""Bounds on what a configuration may ask for, checked before anything is allocated.

A configuration read from disk, from the Hub or from the command line is untrusted input: a
``config.json`` asking for ``timesteps = 1e9`` makes a schedule allocate its float64 tables and
per-step records (gigabytes) before anything fails, and ``--image-size 100000`` on 8x8 digits
pads every image to 10^10 pixels until the OOM killer ends the process without a word. Each
limit below is far above what any published DDPM uses and low enough that a value which passes
is not itself the cause of an allocation failure; the reasoning is beside each constant.

Every ``check_*`` function takes the value and ``where`` it came from (``"--timesteps"``,
``"config.json of runs/x"``, ``"scheduler_config.json (num_train_timesteps) of user/repo"``),
and raises :class:`LimitError` (a ``ValueError``) whose message names the source, the value, the
limit and what to do. They return the value, as an ``int``, when it passes.

Example:
    >>> check_timesteps(1000, "--timesteps")
    1000
    >>> check_timesteps(10**9, "config.json of runs/x")
    Traceback (most recent call last):
    ...
    diffusionkit.limits.LimitError: config.json of runs/x: timesteps 1000000000 is above the limit of 100,000 ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_IMAGE_CHANNELS",
    "MAX_IMAGE_SIZE",
    "MAX_LEVELS",
    "MAX_SAMPLE_COUNT",
    "MAX_TIMESTEPS",
    "MAX_UPSCALE",
    "MAX_WIDTH",
    "LimitError",
    "check_image_channels",
    "check_image_size",
    "check_levels",
    "check_sample_count",
    "check_timesteps",
    "check_unet_config",
    "check_upscale",
    "check_width",
]

#: Diffusion steps ``T``. Published DDPMs use 1,000 (Ho et al. 2020) to 4,000 (Nichol &
#: Dhariwal 2021). A schedule holds about ten float64 tables of length ``T`` and one record of
#: Python floats per step (a few hundred bytes): about 30 MB at this limit, tens of GB at 10^8.
MAX_TIMESTEPS = 100_000

#: Image channels (network input/output). Greyscale 1, RGB 3, RGBA 4, latents 4-16; more is
#: a misread config (a width or a size in the channels field) rather than an image.
MAX_IMAGE_CHANNELS = 64

#: Channels of one U-Net level (``dim * mult``). The widest published DDPM U-Nets use about
#: 1,024 (ADM at 256x256: 256 x 4); one 3x3 convolution at 4,096 channels already holds 151M
#: weights (600 MB in fp32), so a config past this is a typo or an attack.
MAX_WIDTH = 4096

#: U-Net levels (resolutions). Each level halves the image, so 8 levels need images of at least
#: 128 pixels; published pixel-space U-Nets use 4-7.
MAX_LEVELS = 8

#: Image side in pixels. Pixel-space DDPMs are trained up to 1,024; at 4,096 one fp32 feature
#: map of 64 channels is 4 GiB per image, so larger sizes cannot train on any current device.
MAX_IMAGE_SIZE = 4096

#: How far the built-in datasets (digits 8x8, Fashion-MNIST 28x28) may be enlarged. Padding or
#: interpolating beyond 16x their native size adds no information, only memory: the digits are
#: held in memory at the requested size (1,797 x S^2 x 4 bytes: 118 MB at 16x, 72 TB at
#: --image-size 100000).
MAX_UPSCALE = 16

#: Images per sample grid or sampling call. A grid of this many 64x64 images is a 4096x4096
#: PNG; sampling them is done in one batch, whose activations grow with the count.
MAX_SAMPLE_COUNT = 4096


class LimitError(ValueError):
    """A configured value is outside the bounds of :mod:`diffusionkit.limits`; the message
    names where it came from, the value, the limit and what to do."""


def _integer(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise LimitError(f"{where}: {what} must be an integer, got {value!r}")
    return value


def _check(
    value: Any, what: str, where: str, *, minimum: int, maximum: int, why: str, advice: str
) -> int:
    n = _integer(value, what, where)
    if n < minimum:
        raise LimitError(f"{where}: {what} must be at least {minimum}, got {n}; {advice}")
    if n > maximum:
        raise LimitError(f"{where}: {what} {n} is above the limit of {maximum:,} ({why}); {advice}")
    return n


def check_timesteps(value: Any, where: str) -> int:
    """Check a number of diffusion steps ``T`` (also diffusers' ``num_train_timesteps``).

    Args:
        value: the value as read (an int, or an integral float from JSON).
        where: where it came from, for the message (a flag, a file, a repo).

    Raises:
        LimitError: not an integer, below 2, or above :data:`MAX_TIMESTEPS`.
    """
    return _check(
        value, "timesteps", where, minimum=2, maximum=MAX_TIMESTEPS,
        why="published models use 1,000-4,000; a schedule allocates tables of this length",
        advice="check the value, or retrain with fewer timesteps",
    )  # fmt: skip


def check_image_channels(value: Any, where: str) -> int:
    """Check a number of image channels (a network's input or output channels).

    Raises:
        LimitError: not an integer, below 1, or above :data:`MAX_IMAGE_CHANNELS`.
    """
    return _check(
        value, "image channels", where, minimum=1, maximum=MAX_IMAGE_CHANNELS,
        why="images have 1-4 channels, latents up to 16",
        advice="check that the field holds the channels of an image",
    )  # fmt: skip


def check_width(value: Any, where: str) -> int:
    """Check the channel count of one network level (``dim * mult``, a block's width).

    Raises:
        LimitError: not an integer, below 1, or above :data:`MAX_WIDTH`.
    """
    return _check(
        value, "level width", where, minimum=1, maximum=MAX_WIDTH,
        why="the widest published DDPM U-Nets use about 1,024 channels",
        advice="use a smaller dim or smaller channel multipliers",
    )  # fmt: skip


def check_levels(value: Any, where: str) -> int:
    """Check a number of U-Net levels (resolutions, ``len(dim_mults)``).

    Raises:
        LimitError: not an integer, below 1, or above :data:`MAX_LEVELS`.
    """
    return _check(
        value, "number of levels", where, minimum=1, maximum=MAX_LEVELS,
        why="each level halves the image; published U-Nets use 4-7",
        advice="use fewer channel multipliers",
    )  # fmt: skip


def check_image_size(value: Any, where: str) -> int:
    """Check an image side in pixels.

    Raises:
        LimitError: not an integer, below 1, or above :data:`MAX_IMAGE_SIZE`.
    """
    return _check(
        value, "image size", where, minimum=1, maximum=MAX_IMAGE_SIZE,
        why="one 64-channel fp32 feature map at this size is 4 GiB per image",
        advice="train at a smaller size",
    )  # fmt: skip


def check_upscale(size: int, native: int, dataset: str, where: str) -> int:
    """Check that a dataset of ``native``-pixel images is not enlarged beyond
    :data:`MAX_UPSCALE` times.

    Args:
        size: the requested image side.
        native: the side of the dataset's own images.
        dataset: its name, for the message.
        where: where ``size`` came from.

    Raises:
        LimitError: ``size > MAX_UPSCALE * native``.
    """
    limit = MAX_UPSCALE * native
    if size > limit:
        raise LimitError(
            f"{where}: image size {size} enlarges the {native}x{native} images of {dataset} "
            f"{size / native:.0f} times, above the limit of {MAX_UPSCALE}x ({limit} pixels): "
            f"padding or interpolating adds memory, not information; use an image size of at "
            f"most {limit} (the native size is {native})"
        )
    return size


def check_sample_count(value: Any, where: str) -> int:
    """Check a number of images to sample at once (a grid, ``sample -n``).

    Raises:
        LimitError: not an integer, below 1, or above :data:`MAX_SAMPLE_COUNT`.
    """
    return _check(
        value, "sample count", where, minimum=1, maximum=MAX_SAMPLE_COUNT,
        why="all of them are sampled in one batch",
        advice="draw fewer images per call (several calls with different seeds give more)",
    )  # fmt: skip


def check_unet_config(config: Mapping[str, Any], where: str) -> None:
    """Check the size fields of a diffusionkit ``UNet`` configuration before it is built.

    Checks ``in_channels``/``out_channels`` (:func:`check_image_channels`), the number of
    levels ``len(dim_mults)`` (:func:`check_levels`) and every level's width
    ``dim * mult`` (:func:`check_width`); fields that are absent are left to the constructor.

    Args:
        config: the ``"config"`` mapping of a network entry (as in ``config.json``).
        where: where it came from, for the message.
    """
    for key in ("in_channels", "out_channels"):
        if config.get(key) is not None:
            check_image_channels(config[key], f"{where} ({key})")
    mults = config.get("dim_mults")
    if mults is None:
        return
    if not isinstance(mults, list | tuple):
        raise LimitError(f"{where}: dim_mults must be a list of integers, got {mults!r}")
    check_levels(len(mults), f"{where} (dim_mults)")
    dim = _integer(config.get("dim", 1), "dim", where)
    for mult in mults:
        check_width(dim * _integer(mult, "each dim_mults entry", where), f"{where} (dim x mult)")
