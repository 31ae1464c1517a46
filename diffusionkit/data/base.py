"""The item format and attributes shared by every diffusionkit dataset.

Item format: ``dataset[i]`` returns a tuple ``(image, label)``:

* ``image``: float32 tensor ``(C, H, W)`` with values in [-1, 1];
* ``label``: int64 tensor of shape ``()``; ``-1`` (:data:`NO_LABEL`) means "no label".

A tuple of tensors goes through ``torch.utils.data.default_collate`` unchanged, so a
``DataLoader`` yields ``(images, labels)`` shaped ``(B, C, H, W)`` and ``(B,)``. The label is
always present, so a training loop has one code path for labelled and unlabelled data.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffusionkit.limits import check_image_size

#: Label of an item that has no class.
NO_LABEL = -1

#: One dataset item: ``(image (C, H, W) float32 in [-1, 1], label () int64)``.
Item = tuple[Tensor, Tensor]


class ImageDataset(Dataset[Item]):
    """Base class of the datasets in :mod:`diffusionkit.data`.

    Subclasses set these attributes in ``__init__`` and implement ``__len__`` and
    ``__getitem__`` returning an :data:`Item`.

    Attributes:
        image_size: ``(H, W)`` of every image.
        channels: ``C`` of every image (1 for greyscale, 3 for RGB).
        num_classes: number of classes, labels being ``0 .. num_classes - 1``; ``None`` when
            the data is unlabelled (every label is :data:`NO_LABEL`).
    """

    image_size: tuple[int, int]
    channels: int
    num_classes: int | None

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Item:
        raise NotImplementedError

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"{type(self).__name__}(len={len(self)}, channels={self.channels}, "
            f"image_size=({h}, {w}), num_classes={self.num_classes})"
        )


def make_label(label: int | Tensor | None) -> Tensor:
    """Turn a class index (or ``None`` for "no label") into the int64 scalar of an item."""
    if label is None:
        return torch.tensor(NO_LABEL, dtype=torch.int64)
    return torch.as_tensor(label, dtype=torch.int64).reshape(())


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
