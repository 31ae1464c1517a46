"""The fixed train / held-out split of scikit-learn's 8x8 digits, scaled to [-1, 1].

Every benchmark that scores samples on digits must use this split: the feature classifier in
``benchmarks/assets`` was trained on ``train`` only, and samples are scored against ``test``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DIGITS_SPLIT_SEED = 0  # random_state of train_test_split; changing it invalidates the assets
DIGITS_TEST_SIZE = 0.3


@dataclass(frozen=True)
class ImageSplit:
    """A labelled train / held-out split of single-channel images in [-1, 1].

    Attributes:
        train_images: ``[N_train x 1 x H x W]`` float32 in [-1, 1].
        train_labels: ``[N_train]`` int64 class indices.
        test_images: ``[N_test x 1 x H x W]`` float32 in [-1, 1] (the held-out reference set).
        test_labels: ``[N_test]`` int64 class indices.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def digits_split() -> ImageSplit:
    """Return scikit-learn's 1,797 digits split 70/30, stratified by label.

    The split is ``train_test_split(images, labels, test_size=0.3, stratify=labels,
    random_state=0)``: 1,257 training and 540 held-out images of ``[1 x 8 x 8]``. Raw values
    0..16 are mapped linearly to [-1, 1] (``x / 8 - 1``).

    Returns:
        An :class:`ImageSplit` with float32 images ``[N x 1 x 8 x 8]`` in [-1, 1].
    """
    from sklearn.datasets import load_digits  # optional dependency ([data] / [test] extras)
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 8.0 - 1.0  # (1797, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return ImageSplit(
        train_images=torch.from_numpy(np.ascontiguousarray(x_train)).unsqueeze(1),
        train_labels=torch.from_numpy(y_train),
        test_images=torch.from_numpy(np.ascontiguousarray(x_test)).unsqueeze(1),
        test_labels=torch.from_numpy(y_test),
    )
