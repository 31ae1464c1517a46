"""The built-in ``"fashion-mnist"`` dataset (Xiao et al. 2017): 28x28 greyscale clothing images.

60,000 training and 10,000 test images in 10 classes, read from the standard IDX files
(``train-images-idx3-ubyte.gz`` etc., gzip-compressed or not). Where the files come from,
first match wins:

1. ``root``, when given (downloaded into it when missing);
2. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package ``dataset-fashion-mnist``);
3. ``<cache>/fashion-mnist`` (see :func:`~diffusionkit.data.download.default_cache_dir`),
   downloaded there when missing.

Downloads are checked against the publisher's MD5 of each ``.gz`` file and against the
SHA-256 of its decompressed content; the second also holds for Debian's recompressed files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusionkit.data.base import ImageDataset, Item, as_size, check_channels
from diffusionkit.data.download import DownloadError, default_cache_dir, download_file
from diffusionkit.data.idx import IDXFormatError, read_idx
from diffusionkit.data.scaling import to_model_range
from diffusionkit.data.transforms import Fit, check_fit, fit_to_size, to_channels
from diffusionkit.limits import check_upscale

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Side of the published images.
NATIVE_SIZE = 28

#: Mirrors of the publisher's files, tried in order (the checksums make plain HTTP safe).
MIRRORS: tuple[str, ...] = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class IDXResource:
    """One published file: its name without ``.gz`` and the checksums that identify it."""

    name: str
    gz_md5: str  # the publisher's MD5 of the .gz file
    raw_sha256: str  # SHA-256 of the decompressed IDX bytes


# (train?, kind) -> resource.
RESOURCES: dict[tuple[bool, str], IDXResource] = {
    (True, "images"): IDXResource(
        "train-images-idx3-ubyte",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    (True, "labels"): IDXResource(
        "train-labels-idx1-ubyte",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    (False, "images"): IDXResource(
        "t10k-images-idx3-ubyte",
        "bef4ecab320f06d8554ea6380940ec79",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    (False, "labels"): IDXResource(
        "t10k-labels-idx1-ubyte",
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}


def _find(folder: Path, resource: IDXResource) -> Path | None:
    """The resource's file in ``folder``, plain or ``.gz``, or None."""
    for name in (resource.name, resource.name + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _check_content(resource: IDXResource) -> Callable[[Path], None]:
    """A ``download_file`` check that the decompressed bytes have the published SHA-256."""

    def check(path: Path) -> None:
        with gzip.open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != resource.raw_sha256:
            raise ValueError(
                f"decompressed content has SHA-256 {digest}, expected {resource.raw_sha256}"
            )

    return check


def locate_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Find (or download) the image and label files of one Fashion-MNIST split.

    Args:
        root: folder holding the IDX files; when given, only this folder is used.
        train: the 60,000-image training split, else the 10,000-image test split.
        download: fetch missing files into ``root`` (or the cache) instead of failing.
        cache_dir: cache folder to use instead of :func:`default_cache_dir`.

    Returns:
        ``(images_path, labels_path)``.

    Raises:
        FileNotFoundError: files missing and ``download`` is false.
        DownloadError: files missing and the download failed, e.g. offline.
    """
    images, labels = RESOURCES[(train, "images")], RESOURCES[(train, "labels")]
    if root is not None:
        candidates = [Path(root).expanduser()]
    else:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        candidates = [SYSTEM_DIR, cache / "fashion-mnist"]
    for folder in candidates:
        found = _find(folder, images), _find(folder, labels)
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]
    target = candidates[-1]
    wanted = ", ".join(f"{r.name}[.gz]" for r in (images, labels))
    if not download:
        raise FileNotFoundError(
            f"Fashion-MNIST files {wanted} not found in {', '.join(map(str, candidates))}; "
            "pass download=True, or install the Debian package dataset-fashion-mnist"
        )
    paths = []
    for resource in (images, labels):
        existing = _find(target, resource)
        if existing is not None:
            paths.append(existing)
            continue
        try:
            paths.append(
                download_file(
                    [m + resource.name + ".gz" for m in MIRRORS],
                    target / (resource.name + ".gz"),
                    md5=resource.gz_md5,
                    check=_check_content(resource),
                )
            )
        except DownloadError as error:
            raise DownloadError(
                f"Fashion-MNIST is not available offline and could not be downloaded ({error}).\n"
                f"Either install the Debian/Ubuntu package dataset-fashion-mnist "
                f"(files in {SYSTEM_DIR}), or copy {wanted} into {target} (or a folder passed "
                "as root=)."
            ) from error
    return paths[0], paths[1]


def load_fashion_mnist_arrays(
    root: str | os.PathLike[str] | None = None,
    *,
    train: bool = True,
    download: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read one Fashion-MNIST split; arguments as in :func:`locate_fashion_mnist`.

    Returns:
        ``images``: ``(N, 28, 28)`` uint8, 0 is the (black) background; ``labels``: ``(N,)``
        int64 in 0..9.

    Raises:
        IDXFormatError: a file is corrupted, or images and labels do not belong together.
    """
    images_path, labels_path = locate_fashion_mnist(
        root, train=train, download=download, cache_dir=cache_dir
    )
    images = read_idx(images_path, expected_dtype=np.uint8, expected_ndim=3)
    labels = read_idx(labels_path, expected_dtype=np.uint8, expected_ndim=1)
    if images.shape[1:] != (28, 28):
        raise IDXFormatError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise IDXFormatError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise IDXFormatError(f"{labels_path}: label {int(labels.max())} is not in 0..9")
    return images, labels.astype(np.int64)


class FashionMNISTDataset(ImageDataset):
    """Fashion-MNIST as a diffusionkit dataset.

    Items are ``(image, label)`` with ``image`` a float32 ``(channels, H, W)`` tensor in
    [-1, 1] (background -1) and ``label`` the class 0-9 (see :data:`CLASSES`) as an int64
    scalar. Images are kept as uint8 (47 MB for the training split) and converted per item.

    Args:
        image_size: output ``S`` or ``(H, W)``; 28 is native. Larger sizes pad (centred,
            background -1), unless ``fit="resize"``.
        channels: 1 (greyscale) or 3 (the grey channel repeated).
        train: training split (60,000) or test split (10,000).
        root: folder with the IDX files; see :func:`locate_fashion_mnist` for the search.
        fit: ``"pad"`` (default) or ``"resize"``.
        download: allow downloading missing files.
        cache_dir: override the download cache folder.
    """

    classes: tuple[str, ...] = CLASSES

    def __init__(
        self,
        image_size: int | tuple[int, int] = 28,
        *,
        channels: int = 1,
        train: bool = True,
        root: str | os.PathLike[str] | None = None,
        fit: Fit = "pad",
        download: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.image_size = as_size(image_size)
        for side in self.image_size:
            check_upscale(side, NATIVE_SIZE, "fashion-mnist", "image_size")
        self.channels = check_channels(channels)
        self.num_classes = len(CLASSES)
        self.train = train
        self.fit: Fit = fit
        images, labels = load_fashion_mnist_arrays(
            root, train=train, download=download, cache_dir=cache_dir
        )
        self.images = torch.from_numpy(images)  # (N, 28, 28) uint8
        self.labels = torch.from_numpy(labels)  # (N,) int64
        # Fail on an impossible size now rather than in a DataLoader worker.
        check_fit((NATIVE_SIZE, NATIVE_SIZE), self.image_size, fit)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Item:
        image = to_model_range(self.images[index].unsqueeze(0))  # (1, 28, 28) in [-1, 1]
        image = fit_to_size(image, self.image_size, self.fit)  # (1, H, W)
        return to_channels(image, self.channels), self.labels[index]
