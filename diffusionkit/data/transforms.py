"""Geometry shared by the datasets: fitting images to the size and channels a model wants.

Two ways to reach a target size ``(H, W)`` from an image of size ``(h, w)``:

* ``"pad"``: place the image in the centre of an ``(H, W)`` canvas filled with the background
  value. Pixels are untouched, so small built-in images (digits, Fashion-MNIST) keep their
  exact values. When ``H - h`` is odd the extra row goes to the bottom (extra column: right).
* ``"resize"``: scale so that the image covers ``(H, W)`` (its shorter side, relative to the
  target's aspect, matches), then crop the centre. Aspect ratio is preserved; for a square
  target this is "resize the shorter side, then centre-crop".

Pillow is only used by :func:`pil_cover_crop`, whose caller passes a Pillow image in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from PIL.Image import Image

#: How an image is brought to the requested size; see the module docstring.
Fit = Literal["pad", "resize"]
FITS: tuple[Fit, ...] = ("pad", "resize")


def cover_size(h: int, w: int, target: tuple[int, int]) -> tuple[int, int]:
    """Smallest ``(h', w')`` with the aspect ratio of ``(h, w)`` that covers ``target`` (H, W)."""
    th, tw = target
    scale = max(th / h, tw / w)
    # max() guards against rounding down one pixel below the target.
    return max(th, round(h * scale)), max(tw, round(w * scale))


def center_offsets(h: int, w: int, target: tuple[int, int]) -> tuple[int, int]:
    """``(top, left)`` offset of a centred ``target`` (H, W) box in an ``(h, w)`` image.

    With an odd difference the box sits one pixel nearer the top/left; padding uses the same
    offsets with the roles swapped, so pad-then-crop is the identity.
    """
    th, tw = target
    return (h - th) // 2, (w - tw) // 2


def check_fit(source: tuple[int, int], size: tuple[int, int], fit: Fit) -> None:
    """Raise a ValueError if ``fit`` cannot bring ``source`` (h, w) images to ``size`` (H, W)."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    (h, w), (th, tw) = source, size
    if fit == "pad" and (th < h or tw < w):
        raise ValueError(
            f"cannot pad {h}x{w} images to the smaller size {th}x{tw}; "
            'use fit="resize" to shrink them'
        )


def fit_to_size(
    images: Tensor, size: tuple[int, int], fit: Fit = "pad", *, background: float = -1.0
) -> Tensor:
    """Bring images in [-1, 1] to ``size`` by centred padding or by resizing and centre-cropping.

    Args:
        images: ``(C, h, w)`` or ``(N, C, h, w)`` float tensor in [-1, 1].
        size: target ``(H, W)``.
        fit: ``"pad"`` (image must not be larger than ``size``) or ``"resize"``.
        background: value of padded pixels; -1, the lowest value, is the background of digits
            and Fashion-MNIST.

    Returns:
        ``(C, H, W)`` or ``(N, C, H, W)`` float tensor in [-1, 1]. Bilinear interpolation
        (antialiased when shrinking) takes convex combinations, so values stay in [-1, 1].
    """
    h, w = images.shape[-2:]
    check_fit((h, w), size, fit)
    if (h, w) == size:
        return images
    if fit == "pad":
        th, tw = size
        top, left = (th - h) // 2, (tw - w) // 2
        return F.pad(images, (left, tw - w - left, top, th - h - top), value=background)
    batch = images if images.dim() == 4 else images.unsqueeze(0)
    covered = F.interpolate(
        batch, size=cover_size(h, w, size), mode="bilinear", antialias=True, align_corners=False
    )  # (N, C, h', w') covering size
    top, left = center_offsets(covered.shape[-2], covered.shape[-1], size)
    cropped = covered[..., top : top + size[0], left : left + size[1]]  # (N, C, H, W)
    return cropped if images.dim() == 4 else cropped.squeeze(0)


def to_channels(images: Tensor, channels: int) -> Tensor:
    """Repeat a greyscale channel to RGB when ``channels == 3``.

    Args:
        images: ``(1, H, W)`` or ``(N, 1, H, W)`` tensor.
        channels: 1 or 3.

    Returns:
        ``(channels, H, W)`` or ``(N, channels, H, W)``; a view when ``channels == 3``.
    """
    if channels == 1:
        return images
    return images.expand(*images.shape[:-3], channels, *images.shape[-2:])


def pil_cover_crop(image: Image, size: tuple[int, int]) -> Image:
    """Resize a Pillow image to cover ``size`` (H, W) keeping its aspect ratio, then centre-crop.

    Pillow's bicubic filter widens its support when shrinking, so downscaling is antialiased.
    """
    from PIL import Image as PILImage

    w, h = image.size
    if (h, w) != size:
        ch, cw = cover_size(h, w, size)
        if (ch, cw) != (h, w):
            image = image.resize((cw, ch), PILImage.Resampling.BICUBIC)
        top, left = center_offsets(ch, cw, size)
        image = image.crop((left, top, left + size[1], top + size[0]))
    return image
