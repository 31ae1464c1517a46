"""One resolver from "what the user said" to a dataset, for the command line and the Trainer.

``load_dataset("digits")``, ``load_dataset("fashion-mnist", train=False)``,
``load_dataset("path/to/images", image_size=64)``, ``load_dataset(tensor)`` and
``load_dataset(any_dataset)`` all return an :class:`~diffusionkit.data.base.ImageDataset`
whose items are ``(image (C, H, W) float32 in [-1, 1], label () int64, -1 = none)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from diffusionkit.data.base import ImageDataset, as_size
from diffusionkit.data.digits import DigitsDataset, Split
from diffusionkit.data.fashion_mnist import FashionMNISTDataset
from diffusionkit.data.folder import ImageFolderDataset
from diffusionkit.data.paired import PairedFolderDataset
from diffusionkit.data.tensor import DatasetAdapter, TensorImageDataset

# A built-in loader gets (image_size or None, channels or None, train, root).
BuiltinLoader = Callable[
    [tuple[int, int] | None, int | None, bool, str | os.PathLike[str] | None], ImageDataset
]


def _digits(
    size: tuple[int, int] | None, channels: int | None, train: bool, root: object
) -> ImageDataset:
    # scikit-learn has no official split, so train/test means the fixed stratified split.
    split: Split = "train" if train else "heldout"
    return DigitsDataset(size or 16, channels=channels or 1, split=split)


def _fashion_mnist(
    size: tuple[int, int] | None,
    channels: int | None,
    train: bool,
    root: str | os.PathLike[str] | None,
) -> ImageDataset:
    return FashionMNISTDataset(size or 28, channels=channels or 1, train=train, root=root)


#: Built-in dataset names and their loaders.
BUILTIN_DATASETS: dict[str, BuiltinLoader] = {
    "digits": _digits,
    "fashion-mnist": _fashion_mnist,
}


def load_dataset(
    spec: str | os.PathLike[str] | Dataset[Any] | Tensor | np.ndarray,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    train: bool = True,
    root: str | os.PathLike[str] | None = None,
    value_range: tuple[float, float] | None = None,
    cond: str | os.PathLike[str] | Tensor | np.ndarray | None = None,
    cond_channels: int | None = None,
) -> ImageDataset:
    """Resolve a dataset specification to an :class:`ImageDataset`.

    Args:
        spec: one of

            * ``"digits"``: scikit-learn's 8x8 digits, padded to ``image_size`` (default 16);
              ``train=True`` gives the fixed stratified training part (1,438 images),
              ``train=False`` the held-out part (359); see
              :class:`~diffusionkit.data.digits.DigitsDataset` for all 1,797.
            * ``"fashion-mnist"``: 28x28 Fashion-MNIST, training (60,000) or test (10,000).
            * a path (``str`` or ``PathLike``) to a folder of images; ``image_size`` required.
              A folder named like a built-in is reached as ``"./digits"`` or a ``Path``.
            * a ``(N, C, H, W)`` tensor or array, or a ``torch.utils.data.Dataset``; float
              data must be in [-1, 1] unless ``value_range`` is given.
            * an :class:`ImageDataset`, returned as it is (after the checks below).

            Names are case-insensitive, and "_" may stand for "-".
        image_size: ``S`` or ``(H, W)`` the model expects. Built-ins and folders produce this
            size; for tensors and datasets it is checked.
        channels: 1 or 3, what the model expects; built-ins and folders convert to it (built-in
            default 1, folder default 3); for tensors and datasets it is checked.
        train: training or test/held-out split of a built-in; ignored otherwise.
        root: folder holding the files of ``"fashion-mnist"``; ignored otherwise.
        value_range: ``(low, high)`` of tensor or dataset values, converted to [-1, 1].
        cond: conditioning images, one per image, for image-conditional models: with a folder
            ``spec``, a folder of images paired with it by relative file name
            (:class:`~diffusionkit.data.paired.PairedFolderDataset`); with a tensor ``spec``,
            a ``(N, C_cond, H, W)`` tensor or array. Items are then ``(image, label, cond)``.
        cond_channels: 1 or 3 for a folder ``cond`` (default: ``channels``).

    Returns:
        A dataset with ``image_size``, ``channels``, ``num_classes`` and ``cond_channels``
        attributes.

    Raises:
        ValueError: unknown name (the message lists the valid ones), or data that does not
            match ``image_size``/``channels``, or values outside the expected range.
    """
    size = None if image_size is None else as_size(image_size)
    dataset: ImageDataset
    if cond is not None:
        return _with_cond(spec, cond, size, channels, cond_channels, value_range)
    if isinstance(spec, str) and _builtin_key(spec) in BUILTIN_DATASETS:
        _no_value_range(value_range, spec)
        dataset = BUILTIN_DATASETS[_builtin_key(spec)](size, channels, train, root)
    elif isinstance(spec, str | os.PathLike):
        _no_value_range(value_range, spec)
        path = Path(spec).expanduser()
        if not path.exists():
            raise ValueError(
                f"unknown dataset {os.fspath(spec)!r}: not a built-in name (valid names: "
                f"{', '.join(BUILTIN_DATASETS)}) and no such file or folder"
            )
        if size is None:
            raise ValueError(f"image_size is required to load the image folder {path}")
        dataset = ImageFolderDataset(path, size, channels=channels or 3)
    elif isinstance(spec, ImageDataset):
        dataset = spec
    elif isinstance(spec, Tensor | np.ndarray):
        dataset = TensorImageDataset(spec, value_range=value_range)
    elif isinstance(spec, Dataset):
        dataset = DatasetAdapter(spec, value_range=value_range)
    else:
        raise TypeError(
            f"cannot make a dataset from a {type(spec).__name__}; pass a built-in name "
            f"({', '.join(BUILTIN_DATASETS)}), a folder path, a tensor or a Dataset"
        )
    _check_matches(dataset, size, channels)
    return dataset


def _with_cond(
    spec: object,
    cond: str | os.PathLike[str] | Tensor | np.ndarray,
    size: tuple[int, int] | None,
    channels: int | None,
    cond_channels: int | None,
    value_range: tuple[float, float] | None,
) -> ImageDataset:
    """The dataset of ``(image, label, cond)`` items for ``load_dataset(spec, cond=cond)``."""
    dataset: ImageDataset
    if isinstance(spec, str) and _builtin_key(spec) in BUILTIN_DATASETS:
        raise ValueError(
            f"cond pairs conditioning images with image files by name, so the images must be "
            f"a folder, not the built-in {spec!r}: write its images to a folder first "
            "(examples/super_resolution.py does this for Fashion-MNIST)"
        )
    if isinstance(spec, str | os.PathLike) and isinstance(cond, str | os.PathLike):
        _no_value_range(value_range, spec)
        if size is None:
            raise ValueError(f"image_size is required to load the image folder {spec}")
        for what, path in (("image", spec), ("conditioning image", cond)):
            if not Path(path).expanduser().is_dir():
                raise ValueError(f"the {what} folder {os.fspath(path)} does not exist")
        dataset = PairedFolderDataset(
            spec, cond, size, channels=channels or 3, cond_channels=cond_channels
        )
    elif isinstance(spec, Tensor | np.ndarray) and isinstance(cond, Tensor | np.ndarray):
        dataset = TensorImageDataset(spec, cond=cond, value_range=value_range)
    else:
        raise TypeError(
            f"cond goes with images of its kind: a folder with a folder (paired by file name), "
            f"a tensor with a tensor; got images as {type(spec).__name__} and cond as "
            f"{type(cond).__name__}. A Dataset yields its conditioning images in its items "
            "instead: (image, cond) or {'image': ..., 'cond': ...}"
        )
    _check_matches(dataset, size, channels)
    return dataset


def _builtin_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _no_value_range(value_range: tuple[float, float] | None, spec: str | os.PathLike[str]) -> None:
    if value_range is not None:
        raise ValueError(
            f"value_range applies to tensors and datasets, not to {os.fspath(spec)!r}, whose "
            "scaling is built in"
        )


def _check_matches(
    dataset: ImageDataset, size: tuple[int, int] | None, channels: int | None
) -> None:
    """Fail early when user data does not have the size or channels the model expects."""
    if size is not None and tuple(dataset.image_size) != size:
        raise ValueError(
            f"the dataset's images are {dataset.image_size[0]}x{dataset.image_size[1]}, but "
            f"image_size {size[0]}x{size[1]} was requested; resize the data to match"
        )
    if channels is not None and dataset.channels != channels:
        raise ValueError(
            f"the dataset's images have {dataset.channels} channels, but {channels} were requested"
        )
