"""The fixed train / held-out splits the shipped feature classifiers were trained and calibrated on.

These are the benchmarks' splits (``digits.py``: scikit-learn's ``train_test_split``, 1,257 /
540; ``fashion.py``: the official 60,000 / 10,000). ``diffusionkit eval`` instead scores
against the library's own held-out parts (``load_dataset(name, train=False)``), the images that
models trained with ``diffusionkit train`` never saw.
"""

from __future__ import annotations

from benchmarks.quality.digits import ImageSplit
from diffusionkit.metrics import SHIPPED_CLASSIFIERS


def dataset_split(dataset: str) -> ImageSplit:
    """The fixed train / held-out split of ``dataset`` ("digits" or "fashion-mnist")."""
    if dataset == "digits":
        from benchmarks.quality.digits import digits_split

        return digits_split()
    if dataset == "fashion-mnist":
        from benchmarks.quality.fashion import fashion_split

        return fashion_split()
    raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(SHIPPED_CLASSIFIERS)}")
