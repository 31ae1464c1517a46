"""Training data for diffusionkit: built-in datasets, image folders, and user tensors/datasets.

Every dataset here yields items ``(image, label)``:

* ``image``: float32 tensor ``(C, H, W)`` with values in [-1, 1];
* ``label``: int64 tensor of shape ``()``, the class index, or ``-1`` (:data:`NO_LABEL`) for
  "no label".

A ``DataLoader`` therefore gives ``(images (B, C, H, W), labels (B,))``. Every dataset has
``image_size`` ``(H, W)``, ``channels``, ``num_classes`` (None when unlabelled) and
``cond_channels``. Datasets of pairs for image-conditional models
(:class:`PairedFolderDataset`, ``TensorImageDataset(images, cond=...)``, a wrapped dataset
whose items carry a ``cond``) have ``cond_channels > 0`` and yield ``(image, label, cond)``,
``cond`` float32 ``(C_cond, H, W)``.

Start with :func:`load_dataset`. Pillow and scikit-learn are imported only by the datasets
that need them (``pip install "diffusionkit[data]"``), and ``import diffusionkit`` does not
import this subpackage.
"""

from diffusionkit.data.base import NO_LABEL, CondItem, ImageDataset, Item
from diffusionkit.data.digits import DigitsDataset, digits_split_indices
from diffusionkit.data.download import DownloadError, default_cache_dir
from diffusionkit.data.fashion_mnist import FashionMNISTDataset, load_fashion_mnist_arrays
from diffusionkit.data.folder import IMAGE_EXTENSIONS, ImageFolderDataset, ImageReadError
from diffusionkit.data.idx import IDXFormatError, read_idx
from diffusionkit.data.paired import PairedFolderDataset, UnpairedFilesError, pair_files
from diffusionkit.data.resolve import BUILTIN_DATASETS, load_dataset
from diffusionkit.data.scaling import (
    MODEL_RANGE,
    check_model_range,
    ensure_model_range,
    to_model_range,
)
from diffusionkit.data.tensor import DatasetAdapter, TensorImageDataset

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "MODEL_RANGE",
    "NO_LABEL",
    "CondItem",
    "DatasetAdapter",
    "DigitsDataset",
    "DownloadError",
    "FashionMNISTDataset",
    "IDXFormatError",
    "ImageDataset",
    "ImageFolderDataset",
    "ImageReadError",
    "Item",
    "PairedFolderDataset",
    "TensorImageDataset",
    "UnpairedFilesError",
    "check_model_range",
    "default_cache_dir",
    "digits_split_indices",
    "ensure_model_range",
    "load_dataset",
    "load_fashion_mnist_arrays",
    "pair_files",
    "read_idx",
    "to_model_range",
]
