"""The built-in ``"digits"`` dataset: scikit-learn's 8x8 handwritten digits.

1,797 greyscale images of the digits 0-9 (about 180 per class), pixel values 0..16 with 0 the
background, bundled inside scikit-learn so they need no download. Small enough to train a
DDPM on a CPU in minutes, which makes them the library's smoke-test and benchmark data.

Sizing: by default the 8x8 images are *padded* (centred on a background canvas, value -1) to
the requested size, 16x16 unless told otherwise, so the pixels stay exactly the originals;
``image_size=8`` is the native size. ``fit="resize"`` scales them instead (bilinear).

Splits: :func:`digits_split_indices` gives a fixed, stratified train/held-out partition that
does not depend on any random number generator's stream, so benchmark numbers from different
versions of numpy, torch or this library are computed on the same images.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch

from diffusionkit.data._optional import require
from diffusionkit.data.base import ImageDataset, Item, as_size, check_channels
from diffusionkit.data.scaling import to_model_range
from diffusionkit.data.transforms import Fit, fit_to_size, to_channels
from diffusionkit.limits import check_upscale

Split = Literal["all", "train", "heldout"]
SPLITS: tuple[Split, ...] = ("all", "train", "heldout")

#: Native size and pixel range of the scikit-learn digits.
NATIVE_SIZE = 8
VALUE_RANGE = (0.0, 16.0)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@functools.cache
def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Load the raw digits from scikit-learn (parsed once per process, then cached).

    Returns:
        ``images``: ``(1797, 8, 8)`` float64 with values 0..16; ``labels``: ``(1797,)`` int64.
        Both are read-only, since the cached arrays are shared.
    """
    datasets = require("sklearn.datasets", "scikit-learn", 'The "digits" dataset')
    bunch = datasets.load_digits()
    images = np.array(bunch.images, dtype=np.float64)
    labels = np.array(bunch.target, dtype=np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014): a fixed, well-mixed hash of uint64 values.

    Used instead of a seeded RNG so that the split is defined by this code alone.
    """
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def digits_split_indices(
    labels: np.ndarray, split: Split, *, heldout_fraction: float = 0.2, seed: int = 0
) -> np.ndarray:
    """Indices of a deterministic, stratified train/held-out split.

    Within each class the items are ordered by a hash of ``(seed, index)``; the first
    ``round(heldout_fraction * class_size)`` go to ``"heldout"``, the rest to ``"train"``. Each
    class is therefore represented in both parts in proportion to its size, and the split is
    identical on every platform and library version.

    Args:
        labels: ``(N,)`` integer class labels.
        split: ``"train"``, ``"heldout"`` or ``"all"``.
        heldout_fraction: share of each class that is held out, in (0, 1).
        seed: selects another fixed split; 0 is the one benchmarks use.

    Returns:
        ``(M,)`` int64 indices into ``labels``, ascending.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    labels = np.asarray(labels)
    if split == "all":
        return np.arange(len(labels), dtype=np.int64)
    index = np.arange(len(labels), dtype=np.uint64)
    keys = _splitmix64(index ^ _splitmix64(np.full_like(index, seed)))
    heldout = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = members[np.argsort(keys[members], kind="stable")]
        heldout[order[: round(heldout_fraction * len(members))]] = True
    chosen = heldout if split == "heldout" else ~heldout
    return np.flatnonzero(chosen).astype(np.int64)


class DigitsDataset(ImageDataset):
    """scikit-learn's handwritten digits as a diffusionkit dataset.

    Items are ``(image, label)`` with ``image`` a float32 ``(channels, H, W)`` tensor in
    [-1, 1] (background -1, ink up to 1) and ``label`` the digit 0-9 as an int64 scalar.

    Args:
        image_size: output ``S`` or ``(H, W)``; 8 is native, default 16 (padded).
        channels: 1 (greyscale) or 3 (the grey channel repeated).
        split: ``"all"`` (1,797 images), or the fixed stratified ``"train"`` (1,438) /
            ``"heldout"`` (359) parts of :func:`digits_split_indices`.
        fit: ``"pad"`` (centre on a background canvas, exact pixels; default) or ``"resize"``.
        heldout_fraction: share of each class held out by the split.
        seed: selects another fixed split; 0 is the benchmark split.
    """

    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def __init__(
        self,
        image_size: int | tuple[int, int] = 16,
        *,
        channels: int = 1,
        split: Split = "all",
        fit: Fit = "pad",
        heldout_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.image_size = as_size(image_size)
        for side in self.image_size:  # the images are held in memory at this size
            check_upscale(side, NATIVE_SIZE, "digits", "image_size")
        self.channels = check_channels(channels)
        self.num_classes = len(self.classes)
        self.split = split
        images, labels = load_digits_arrays()
        keep = digits_split_indices(labels, split, heldout_fraction=heldout_fraction, seed=seed)
        # The whole dataset is about 1 MB even at 32x32, so it is converted once, up front.
        scaled = to_model_range(images[keep], VALUE_RANGE).unsqueeze(1)  # (N, 1, 8, 8)
        resized = fit_to_size(scaled, self.image_size, fit)  # (N, 1, H, W)
        self.images = to_channels(resized, self.channels).contiguous()  # (N, C, H, W)
        self.labels = torch.from_numpy(labels[keep])  # (N,), a copy: fancy indexing

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Item:
        return self.images[index], self.labels[index]
