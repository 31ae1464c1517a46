"""User data as diffusionkit datasets: a tensor of images, or any ``torch.utils.data.Dataset``.

Both adapters produce the standard item ``(image (C, H, W) float32 in [-1, 1], label ()
int64)``, or ``(image, label, cond)`` when the data carries conditioning images, and check the
value range: float data is expected in [-1, 1] unless ``value_range`` says otherwise, uint8
data is taken as [0, 255], and data that does not fit raises a ValueError with the minimum and
maximum found and the ``value_range`` that converts it. Conditioning images are passed on as
they are (uint8 mapped to [-1, 1]; see :func:`~diffusionkit.data.base.as_cond_image`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffusionkit.data.base import (
    NO_LABEL,
    CondItem,
    ImageDataset,
    Item,
    as_cond_image,
    make_label,
)
from diffusionkit.data.scaling import ensure_model_range

# How many leading items of a wrapped Dataset are inspected at construction.
_PROBE_ITEMS = 8


def _check_image_shape(shape: tuple[int, ...], what: str) -> None:
    """Reject a shape that is not ``(..., C, H, W)``, with a hint for channels-last data."""
    if len(shape) >= 3 and shape[-1] in (1, 3, 4) and shape[-3] > 4:
        raise ValueError(
            f"{what} has shape {tuple(shape)}, which looks channels-last (..., H, W, C); "
            "diffusionkit expects channels first: use x.permute(0, 3, 1, 2) for a batch or "
            "x.permute(2, 0, 1) for one image"
        )


class TensorImageDataset(ImageDataset):
    """A tensor of images (and optionally labels and conditioning images) as a dataset.

    The whole tensor is checked once, at construction, and converted to float32 in [-1, 1].
    Items are ``(image, label)``, or ``(image, label, cond)`` with ``cond``.

    Args:
        images: ``(N, C, H, W)`` tensor or numpy array. uint8 is taken as [0, 255]; float is
            expected in [-1, 1] unless ``value_range`` is given.
        labels: optional ``(N,)`` integer class labels (``-1`` = no label).
        cond: optional ``(N, C_cond, H, W)`` conditioning images, one per image (e.g. the
            low-resolution copies for super-resolution), float (passed on as given) or uint8
            (mapped to [-1, 1]); ``value_range`` does not apply to them.
        value_range: ``(low, high)`` the images are in, e.g. ``(0, 1)`` or ``(0, 255)``; they
            are mapped linearly to [-1, 1]. Pass ``(-1, 1)`` to accept [-1, 1] data that has
            no negative value (otherwise rejected as probable [0, 1] data).
        num_classes: number of classes; defaults to ``labels.max() + 1``.

    Raises:
        ValueError: wrong shapes, or values outside the expected range (message says the
            min/max found and which ``value_range`` to pass).
    """

    def __init__(
        self,
        images: Tensor | np.ndarray,
        labels: Tensor | np.ndarray | None = None,
        *,
        cond: Tensor | np.ndarray | None = None,
        value_range: tuple[float, float] | None = None,
        num_classes: int | None = None,
    ) -> None:
        images = torch.as_tensor(images)
        if images.dim() != 4:
            _check_image_shape(tuple(images.shape), "images")
            raise ValueError(
                f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}"
                + ("; add a channel axis with images.unsqueeze(1)" if images.dim() == 3 else "")
            )
        _check_image_shape(tuple(images.shape), "images")
        self.images = ensure_model_range(images, value_range, what="images")  # (N, C, H, W)
        n = images.shape[0]
        if labels is None:
            self.labels = torch.full((n,), NO_LABEL, dtype=torch.int64)
        else:
            self.labels = torch.as_tensor(labels)
            if self.labels.is_floating_point() or self.labels.shape != (n,):
                raise ValueError(
                    f"labels must be {n} integers, shape ({n},), got {self.labels.dtype} of "
                    f"shape {tuple(self.labels.shape)}"
                )
            self.labels = self.labels.to(torch.int64)
        self.num_classes = _num_classes(self.labels, num_classes)
        self.channels = images.shape[1]
        self.image_size = (images.shape[2], images.shape[3])
        self.cond: Tensor | None = None
        if cond is not None:
            self.cond = as_cond_image(cond, "cond")  # (N, C_cond, H, W)
            if (
                self.cond.dim() != 4
                or self.cond.shape[0] != n
                or self.cond.shape[2:] != (images.shape[2:])
            ):
                _check_image_shape(tuple(self.cond.shape), "cond")
                raise ValueError(
                    f"cond must be shaped ({n}, C_cond, {images.shape[2]}, {images.shape[3]}): "
                    f"one conditioning image per image, of the images' height and width; got "
                    f"{tuple(self.cond.shape)}"
                )
            self.cond_channels = self.cond.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Item | CondItem:
        if self.cond is not None:
            return self.images[index], self.labels[index], self.cond[index]
        return self.images[index], self.labels[index]


def _num_classes(labels: Tensor, num_classes: int | None) -> int | None:
    """Check ``(N,)`` labels against ``num_classes``, or infer it; None if all are -1."""
    if labels.numel() and int(labels.min()) < NO_LABEL:
        raise ValueError(f"labels must be >= -1 (-1 = no label), found {int(labels.min())}")
    top = int(labels.max()) if labels.numel() else NO_LABEL
    if num_classes is None:
        return None if top == NO_LABEL else top + 1
    if top >= num_classes:
        raise ValueError(f"label {top} is out of range for num_classes={num_classes}")
    return num_classes


class DatasetAdapter(ImageDataset):
    """Any ``torch.utils.data.Dataset`` of image tensors as a diffusionkit dataset.

    The wrapped dataset's items may be

    * an image tensor ``(C, H, W)``;
    * a tuple or list ``(image, label)``, the label an int or an integer tensor of one
      element (further elements are ignored);
    * a tuple or list ``(image, cond)``, ``cond`` a conditioning image ``(C_cond, H, W)`` with
      the image's ``H, W`` (told from a label by being a tensor or array of three dimensions);
    * a mapping with the key ``"image"`` and optionally ``"label"`` and ``"cond"`` (no other
      keys: a misspelt one would otherwise be dropped silently).

    The first item decides which: every item must then have the same form, and items carrying
    a ``cond`` make this a dataset of ``(image, label, cond)`` items with ``cond_channels``
    set. Shapes are taken from the first item; the first few items are checked for the
    [0, 1]-instead-of-[-1, 1] mistake at construction, and every item's range and shape when
    it is read.

    Args:
        dataset: the map-style dataset to wrap; it must have ``__len__``.
        value_range: ``(low, high)`` the images are in; None means uint8 = [0, 255] and
            float = [-1, 1]. See :class:`TensorImageDataset`. It does not apply to ``cond``.
        num_classes: number of classes; defaults to ``len(dataset.classes)`` when the dataset
            has a ``classes`` attribute (torchvision's convention), else None (unconditional).
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        value_range: tuple[float, float] | None = None,
        num_classes: int | None = None,
    ) -> None:
        if not isinstance(dataset, Sized):
            raise TypeError(f"{type(dataset).__name__} has no __len__; wrap a map-style Dataset")
        self._length = len(dataset)
        if self._length == 0:
            raise ValueError(f"{type(dataset).__name__} is empty")
        self.dataset = dataset
        self.value_range = value_range
        first = _split_item(dataset[0], 0)
        _check_image_shape(tuple(first.image.shape), "item 0's image")
        if first.image.dim() != 3:
            raise ValueError(
                f"item 0's image must be a (C, H, W) tensor, got shape {tuple(first.image.shape)}"
            )
        self.channels = first.image.shape[0]
        self.image_size = (first.image.shape[1], first.image.shape[2])
        self._cond_shape: tuple[int, ...] | None = None
        if first.cond is not None:
            cond = as_cond_image(first.cond, "item 0's cond")
            if cond.dim() != 3 or tuple(cond.shape[1:]) != self.image_size:
                _check_image_shape(tuple(cond.shape), "item 0's cond")
                raise ValueError(
                    f"item 0's cond must be a (C_cond, {self.image_size[0]}, "
                    f"{self.image_size[1]}) tensor (the image's height and width), got shape "
                    f"{tuple(cond.shape)}"
                )
            self._cond_shape = tuple(cond.shape)
            self.cond_channels = cond.shape[0]
        if num_classes is None and hasattr(dataset, "classes"):
            num_classes = len(dataset.classes)
        self.num_classes = num_classes
        # One item in [-1, 1] can legitimately lack negative values; several together cannot.
        probe = [self._read(i).image for i in range(min(self._length, _PROBE_ITEMS))]
        if value_range is None and first.image.is_floating_point():
            ensure_model_range(
                torch.stack(probe), what=f"the first {len(probe)} images", strict_sign=True
            )

    def __len__(self) -> int:
        return self._length

    def _read(self, index: int) -> _Parts:
        """Item ``index`` with its image converted and checked, its cond checked."""
        parts = _split_item(self.dataset[index], index)
        image = parts.image
        if tuple(image.shape) != (self.channels, *self.image_size):
            raise ValueError(
                f"item {index}'s image has shape {tuple(image.shape)}, but item 0's is "
                f"{(self.channels, *self.image_size)}; all images must have one shape"
            )
        image = ensure_model_range(
            image, self.value_range, what=f"item {index}'s image", strict_sign=False
        )
        cond = parts.cond
        if (cond is None) != (self._cond_shape is None):
            has = "has no cond" if cond is None else "has a cond"
            first = "item 0 has one" if cond is None else "item 0 has none"
            raise ValueError(
                f"item {index} {has}, but {first}: every item must carry a conditioning image, "
                "or none must"
            )
        if cond is not None:
            cond = as_cond_image(cond, f"item {index}'s cond")
            if tuple(cond.shape) != self._cond_shape:
                raise ValueError(
                    f"item {index}'s cond has shape {tuple(cond.shape)}, but item 0's is "
                    f"{self._cond_shape}; all conditioning images must have one shape"
                )
        return _Parts(image, parts.label, cond)

    def __getitem__(self, index: int) -> Item | CondItem:
        parts = self._read(index)
        label = make_label(parts.label)
        if parts.cond is not None:
            return parts.image, label, parts.cond
        return parts.image, label


@dataclass
class _Parts:
    """An item of a wrapped dataset taken apart: the image, the raw label, the cond."""

    image: Tensor
    label: Any = None
    cond: Any = None


_ITEM_KEYS = ("image", "label", "cond")


def _split_item(item: Any, index: int) -> _Parts:
    """The image, the label (or None) and the cond (or None) of a wrapped dataset's item."""
    label = cond = None
    if isinstance(item, Mapping):
        unknown = sorted(str(k) for k in item if k not in _ITEM_KEYS)
        if unknown or "image" not in item:
            problem = (
                f"has no 'image' key (its keys: {sorted(str(k) for k in item)})"
                if "image" not in item
                else f"has keys {unknown} that are not read"
            )
            raise ValueError(
                f"item {index} is a mapping that {problem}; a mapping item holds 'image' and "
                "optionally 'label' and 'cond': map other keys away in the dataset's transform"
            )
        item, label, cond = item["image"], item.get("label"), item.get("cond")
    elif isinstance(item, tuple | list):
        if not item:
            raise ValueError(f"item {index} is an empty {type(item).__name__}")
        second = item[1] if len(item) > 1 else None
        if isinstance(second, Tensor | np.ndarray) and second.ndim == 3:
            cond = second
        elif isinstance(second, Tensor | np.ndarray) and math.prod(second.shape) != 1:
            raise ValueError(
                f"item {index}'s second element has shape {tuple(second.shape)}: expected a "
                "label (an int) or a conditioning image (C_cond, H, W)"
            )
        else:
            label = second
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, Tensor):
        raise TypeError(
            f"item {index}'s image is a {type(item).__name__}, expected a (C, H, W) tensor; "
            "give the dataset a transform that returns tensors"
        )
    return _Parts(item, label, cond)
