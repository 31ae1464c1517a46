"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, scaled to [-1, 1].

Install the data with ``apt-get install dataset-fashion-mnist``; it lands in
``/usr/share/datasets/fashion-mnist/`` as the original gzipped IDX files (Xiao et al. 2017).
The held-out set is the official 10,000-image test set.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality.digits import ImageSplit

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_DTYPES = {0x08: np.uint8}  # the only element type Fashion-MNIST uses


def read_idx(path: str | Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into an array of its stored shape.

    The IDX header is two zero bytes, a type code, the number of dimensions, then one big-endian
    uint32 per dimension (LeCun et al., MNIST file format).

    Args:
        path: an ``*-ubyte`` or ``*-ubyte.gz`` file.

    Returns:
        ``uint8`` array, e.g. ``[60000 x 28 x 28]`` for images or ``[60000]`` for labels.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unsupported IDX element type 0x{type_code:02x}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - offset != expected:
        raise ValueError(
            f"{path}: header says {expected} elements, file holds {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=_IDX_DTYPES[type_code], offset=offset).reshape(shape)


def fashion_split(root: str | Path = FASHION_MNIST_DIR) -> ImageSplit:
    """Return Fashion-MNIST's official 60,000 / 10,000 split with images in [-1, 1].

    Args:
        root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.

    Returns:
        An :class:`ImageSplit` with float32 images ``[N x 1 x 28 x 28]`` (``x / 127.5 - 1``).

    Raises:
        FileNotFoundError: the Debian package is not installed (message says how to install it).
    """
    root = Path(root)
    files = {
        key: root / f"{prefix}-ubyte.gz"
        for key, prefix in [
            ("train_images", "train-images-idx3"),
            ("train_labels", "train-labels-idx1"),
            ("test_images", "t10k-images-idx3"),
            ("test_labels", "t10k-labels-idx1"),
        ]
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {missing}. "
            "Install them with: apt-get install dataset-fashion-mnist"
        )
    arrays = {key: read_idx(path) for key, path in files.items()}

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)  # (N, 1, 28, 28)

    return ImageSplit(
        train_images=images(arrays["train_images"]),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=images(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
    )
