"""Image grids and GIFs of model samples, written atomically.

Images follow the library's convention: float tensors in ``[-1, 1]`` (``-1`` black, ``1``
white), shaped ``(B, C, H, W)`` with ``C`` 1 (greyscale) or 3 (RGB). Values outside the range
are clamped when written. Writing needs Pillow (``pip install "diffusionkit[data]"``), which is
imported only when a file is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from diffusionkit.utils._optional import require_pillow
from diffusionkit.utils.atomic import atomic_path

if TYPE_CHECKING:
    from diffusionkit.diffusion import SampleTrajectory

__all__ = [
    "FrameRecorder",
    "make_grid",
    "save_gif",
    "save_grid",
    "to_uint8",
    "trajectory_frames",
]


def _check_batch(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(
            f"{name} must be shaped (B, C, H, W) with B >= 1, got shape {tuple(images.shape)}"
        )
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {images.shape[1]}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [-1, 1], got dtype {images.dtype}")


def make_grid(images: Tensor, nrow: int = 8, *, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile a batch of images into one image, ``nrow`` images per row.

    Args:
        images: ``(B, C, H, W)`` float in ``[-1, 1]``.
        nrow: images per row; the grid has ``ceil(B / nrow)`` rows.
        padding: pixels between images and around the border.
        pad_value: value of the padding, in ``[-1, 1]`` (``1`` is white). Unused cells of the
            last row are filled with it too.

    Returns:
        ``(C, rows * (H + padding) + padding, ncol * (W + padding) + padding)`` float32 on the
        CPU, where ``ncol = min(nrow, B)``.
    """
    _check_batch(images)
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = images.shape
    ncol = min(nrow, b)
    rows = math.ceil(b / ncol)
    grid = torch.full(
        (c, rows * (h + padding) + padding, ncol * (w + padding) + padding),
        float(pad_value),
        dtype=torch.float32,
    )
    src = images.detach().to(device="cpu", dtype=torch.float32)
    for i in range(b):
        top = padding + (i // ncol) * (h + padding)
        left = padding + (i % ncol) * (w + padding)
        grid[:, top : top + h, left : left + w] = src[i]
    return grid


def to_uint8(image: Tensor) -> Tensor:
    """Map ``[-1, 1]`` floats of any shape to uint8 ``[0, 255]`` (clamping out-of-range values).

    Raises:
        ValueError: the tensor holds NaN or infinite values (an image of them would be
            silently black).
    """
    image = image.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(image).all():
        raise ValueError("cannot write an image of NaN or infinite values")
    return ((image.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def _to_pil(image: Tensor, scale: int) -> Any:
    """``(C, H, W)`` in ``[-1, 1]`` -> a Pillow image (mode ``L`` or ``RGB``), upscaled."""
    pil = require_pillow("Writing images")
    pixels = to_uint8(image)
    if scale > 1:  # nearest neighbour keeps small images crisp
        pixels = pixels.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    if pixels.shape[0] == 1:
        return pil.fromarray(pixels[0].numpy(), mode="L")
    return pil.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), mode="RGB")


def _format_for(path: Path, default: str) -> str:
    pil = require_pillow("Writing images")
    return pil.registered_extensions().get(path.suffix.lower(), default)


def save_grid(
    images: Tensor,
    path: str | os.PathLike[str],
    nrow: int = 8,
    *,
    padding: int = 2,
    pad_value: float = 1.0,
    scale: int = 1,
) -> Path:
    """Write a batch of images as one grid image (PNG unless the suffix says otherwise).

    The file is written atomically: a crash mid-write leaves any previous file intact.

    Args:
        images: ``(B, C, H, W)`` float in ``[-1, 1]``, ``C`` 1 or 3.
        path: output file, e.g. ``"samples.png"``; its folder is created if needed.
        nrow: images per row.
        padding: pixels between images.
        pad_value: padding value in ``[-1, 1]``.
        scale: integer nearest-neighbour upscaling of the whole grid (e.g. 4 for 16x16 images).

    Returns:
        ``path`` as a ``Path``.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    grid = make_grid(images, nrow, padding=padding, pad_value=pad_value)
    picture = _to_pil(grid, scale)
    target = Path(path)
    fmt = _format_for(target, "PNG")
    with atomic_path(target) as tmp:
        picture.save(tmp, format=fmt)
    return target


def save_gif(
    frames: Sequence[Tensor] | Tensor,
    path: str | os.PathLike[str],
    *,
    duration_ms: int = 80,
    hold_last_ms: int = 1500,
    loop: int = 0,
    scale: int = 1,
) -> Path:
    """Write an animated GIF, atomically.

    Args:
        frames: a sequence of ``(C, H, W)`` images, or a ``(F, C, H, W)`` tensor, all in
            ``[-1, 1]`` with the same shape (e.g. grids from :func:`make_grid`).
        path: output file, e.g. ``"denoise.gif"``.
        duration_ms: display time of each frame, in milliseconds.
        hold_last_ms: display time of the last frame, so the result stays visible.
        loop: number of repetitions, 0 = forever.
        scale: integer nearest-neighbour upscaling.

    Returns:
        ``path`` as a ``Path``.
    """
    items = list(frames.unbind(0)) if isinstance(frames, Tensor) else list(frames)
    if not items:
        raise ValueError("save_gif needs at least one frame")
    shape = tuple(items[0].shape)
    for i, frame in enumerate(items):
        if not isinstance(frame, Tensor) or frame.ndim != 3 or frame.shape[0] not in (1, 3):
            got = tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__
            raise ValueError(f"frame {i} must be a (C, H, W) tensor with C 1 or 3, got {got}")
        if tuple(frame.shape) != shape:
            raise ValueError(f"frame {i} has shape {tuple(frame.shape)}, frame 0 has {shape}")
    if duration_ms < 1 or hold_last_ms < 1:
        raise ValueError("duration_ms and hold_last_ms must be >= 1")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    pictures = [_to_pil(frame, scale) for frame in items]
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    target = Path(path)
    with atomic_path(target) as tmp:
        pictures[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=durations,
            loop=loop,
        )
    return target


def trajectory_frames(
    trajectory: SampleTrajectory | Tensor,
    *,
    frames: int = 40,
    nrow: int = 8,
    padding: int = 2,
    pad_value: float = 1.0,
    predicted_x0: bool = False,
) -> list[Tensor]:
    """Turn a reverse chain into grid frames for a denoising GIF (see :func:`save_gif`).

    Args:
        trajectory: a :class:`~diffusionkit.SampleTrajectory` (from
            ``reverse_sample(..., return_intermediates=True)``) or a ``(S, B, C, H, W)`` tensor
            of intermediate images.
        frames: number of frames, taken at evenly spaced steps; the first (pure noise) and
            the last (the samples) are always included.
        nrow: images per row of each grid.
        padding: pixels between images.
        pad_value: padding value in ``[-1, 1]``.
        predicted_x0: show the network's running estimate of ``x0`` instead of ``x_t``.

    Returns:
        ``frames`` (or fewer, if the chain is shorter) grids ``(C, H', W')`` in ``[-1, 1]``.
    """
    if isinstance(trajectory, Tensor):
        chain = trajectory
    else:
        chain = trajectory.x0_pred if predicted_x0 else trajectory.x_t
    if chain.ndim != 5 or chain.shape[0] < 1:
        raise ValueError(
            f"the chain must be shaped (S, B, C, H, W), got shape {tuple(chain.shape)}"
        )
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    picks = _even_picks(chain.shape[0], frames)
    return [make_grid(chain[i], nrow, padding=padding, pad_value=pad_value) for i in picks]


def _even_picks(total: int, count: int) -> list[int]:
    """``count`` evenly spaced indices in ``[0, total)``, always including the first and last."""
    count = min(count, total)
    if count <= 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


class FrameRecorder:
    """A ``reverse_sample`` callback that keeps grid frames of a few steps, for a GIF.

    Unlike ``return_intermediates=True``, which keeps every step of the chain in memory,
    this keeps only ``frames`` grids, so it suits large images and long chains.

    Args:
        steps: the number of reverse steps the sampling will run.
        frames: how many frames to keep, at evenly spaced steps (the last step included).
        nrow: images per row of each grid.
        predicted_x0: record the network's estimate of ``x0`` instead of ``x_t``.

    Example:
        >>> recorder = FrameRecorder(steps=50)
        >>> # model.reverse_sample(shape, steps=50, callback=recorder); save_gif(recorder.frames, "d.gif")
    """

    def __init__(
        self, steps: int, frames: int = 40, *, nrow: int = 8, predicted_x0: bool = False
    ) -> None:
        if steps < 1 or frames < 1:
            raise ValueError(f"steps and frames must be >= 1, got {steps} and {frames}")
        self.steps = steps
        self.nrow = nrow
        self.predicted_x0 = predicted_x0
        self._picks = set(_even_picks(steps, frames))
        self.frames: list[Tensor] = []

    def __call__(self, step: int, t: int, x_t: Tensor, x0_pred: Tensor) -> None:
        if step in self._picks:
            self.frames.append(make_grid(x0_pred if self.predicted_x0 else x_t, self.nrow))
