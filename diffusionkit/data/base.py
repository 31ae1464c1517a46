"""The item format and attributes shared by every diffusionkit dataset.

Item format: ``dataset[i]`` returns a tuple ``(image, label)``:

* ``image``: float32 tensor ``(C, H, W)`` with values in [-1, 1];
* ``label``: int64 tensor of shape ``()``; ``-1`` (:data:`NO_LABEL`) means "no label".

A dataset with conditioning images (``cond_channels > 0``: pairs for super-resolution or any
image-to-image task) returns ``(image, label, cond)`` (:data:`CondItem`), ``cond`` float32
``(C_cond, H, W)`` with the image's ``H, W``.

A tuple of tensors goes through ``torch.utils.data.default_collate`` unchanged, so a
``DataLoader`` yields ``(images, labels)`` shaped ``(B, C, H, W)`` and ``(B,)`` (and ``conds``
``(B, C_cond, H, W)``). The label is always present, so a training loop has one code path for
labelled and unlabelled data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffusionkit.data.scaling import to_model_range
from diffusionkit.limits import check_image_size

#: Label of an item that has no class.
NO_LABEL = -1

#: One dataset item: ``(image (C, H, W) float32 in [-1, 1], label () int64)``.
Item = tuple[Tensor, Tensor]
#: One item of a dataset with conditioning images: ``(image, label, cond (C_cond, H, W) float32)``.
CondItem = tuple[Tensor, Tensor, Tensor]


class ImageDataset(Dataset[Item | CondItem]):
    """Base class of the datasets in :mod:`diffusionkit.data`.

    Subclasses set these attributes in ``__init__`` and implement ``__len__`` and
    ``__getitem__`` returning an :data:`Item`, or a :data:`CondItem` when ``cond_channels > 0``.

    Attributes:
        image_size: ``(H, W)`` of every image.
        channels: ``C`` of every image (1 for greyscale, 3 for RGB).
        num_classes: number of classes, labels being ``0 .. num_classes - 1``; ``None`` when
            the data is unlabelled (every label is :data:`NO_LABEL`).
        cond_channels: ``C_cond`` of the conditioning images the items carry; 0 (the default)
            when they carry none.
    """

    image_size: tuple[int, int]
    channels: int
    num_classes: int | None
    cond_channels: int = 0

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Item | CondItem:
        raise NotImplementedError

    def __repr__(self) -> str:
        h, w = self.image_size
        cond = f", cond_channels={self.cond_channels}" if self.cond_channels else ""
        return (
            f"{type(self).__name__}(len={len(self)}, channels={self.channels}, "
            f"image_size=({h}, {w}), num_classes={self.num_classes}{cond})"
        )


def make_label(label: int | Tensor | None) -> Tensor:
    """Turn a class index (or ``None`` for "no label") into the int64 scalar of an item."""
    if label is None:
        return torch.tensor(NO_LABEL, dtype=torch.int64)
    return torch.as_tensor(label, dtype=torch.int64).reshape(())


def as_cond_image(value: Tensor | np.ndarray, what: str) -> Tensor:
    """A conditioning image (or batch of them) as float32, values as given.

    Conditioning images are passed to the network as they are (a depth map or a mask need not
    lie in [-1, 1]), except uint8 data, which is mapped from [0, 255] to [-1, 1] like images.
    Use the images' scale for images (a low-resolution copy, an edge map) so that the null
    condition, all zeros, stays distinct from real ones.

    Args:
        value: ``(C_cond, H, W)`` or ``(N, C_cond, H, W)`` tensor or numpy array.
        what: how to name it in error messages, e.g. ``"item 3's cond"``.

    Raises:
        TypeError: not a tensor or array, or an integer type other than uint8, or bool.
        ValueError: NaN or infinite values.
    """
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{what} is a {type(value).__name__}, expected a (C_cond, H, W) tensor; give the "
            "dataset a transform that returns tensors"
        )
    if value.dtype == torch.uint8:
        return to_model_range(value, what=what)
    if not value.is_floating_point():
        raise TypeError(
            f"{what} has dtype {value.dtype}; conditioning images must be floating point "
            "(passed on as they are) or uint8 (mapped from [0, 255] to [-1, 1])"
        )
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{what} holds NaN or infinite values")
    return value.float()


def as_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Normalise an image size given as ``S`` or ``(H, W)`` to ``(H, W)``, checking it."""
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
        size = (int(image_size[0]), int(image_size[1]))
    if min(size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    for side in size:
        check_image_size(side, "image_size")
    return size


def check_channels(channels: int) -> int:
    """Check that ``channels`` is one the datasets can produce (1 or 3)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    return channels
