"""A folder of image files as a dataset (needs Pillow: ``pip install "diffusionkit[data]"``).

* Files are found recursively; names are matched case-insensitively against
  :data:`IMAGE_EXTENSIONS`; hidden files and folders (starting with ".") are skipped, which
  keeps out ``.git``, ``.ipynb_checkpoints`` and macOS ``._name.png`` resource forks, all of
  which would otherwise look like images. Only regular files (or links to them) are images:
  a FIFO named ``x.png`` would block the reader forever, a device would never end.
* Labels: when every image lies inside an immediate subfolder of the root, the subfolder names,
  sorted, are the classes (``root/cat/1.png`` -> class of "cat", as in torchvision's
  ImageFolder). When any image lies directly in the root the dataset is unlabelled. Pass
  ``labels=True``/``False`` to require or ignore subfolder classes.
* Each image is converted to the model's channels (1 -> Pillow mode "L", 3 -> "RGB"; alpha is
  composited onto white, 16-bit greyscale is scaled rather than clipped), resized so that it
  covers the requested size keeping its aspect ratio (for a square size: shorter side to the
  size), and centre-cropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diffusionkit.data._optional import require
from diffusionkit.data.base import NO_LABEL, ImageDataset, Item, as_size, check_channels
from diffusionkit.data.scaling import to_model_range
from diffusionkit.data.transforms import pil_cover_crop, to_channels
from diffusionkit.utils.files import NotARegularFileError, is_regular_file, open_regular

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)

# Pillow opens 16-bit greyscale as one of these; its convert("L") clips values at 255 instead
# of scaling them, so these are converted to float and scaled from (0, 65535).
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class ImageReadError(OSError):
    """An image file could not be decoded; the message names the file."""


def find_images(
    root: str | os.PathLike[str], extensions: Iterable[str] = IMAGE_EXTENSIONS
) -> list[Path]:
    """All image files under ``root``, recursively, sorted by relative path.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        ValueError: no image files were found.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder of images")
    wanted = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    files: list[Path] = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]  # prune in place
        files.extend(
            Path(folder, n)
            for n in names
            if not n.startswith(".")
            and Path(n).suffix.lower() in wanted
            and is_regular_file(Path(folder, n))
        )
    if not files:
        raise ValueError(f"no image files ({', '.join(sorted(wanted))}) found under {root}")
    # Sorting the relative paths makes the item order independent of the file system.
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_image(path: str | os.PathLike[str], size: tuple[int, int], channels: int) -> Tensor:
    """Read one image file as a model-ready tensor.

    Args:
        path: image file.
        size: output ``(H, W)``; the image is resized to cover it and centre-cropped.
        channels: 1 (greyscale) or 3 (RGB).

    Returns:
        float32 ``(channels, H, W)`` in [-1, 1].

    Raises:
        ImageReadError: the file cannot be decoded (message names the file).
    """
    pil = require("PIL.Image", "Pillow", "Reading image folders")
    mode = "L" if channels == 1 else "RGB"
    try:
        # open_regular: a path swapped for a FIFO after the folder was listed fails at once
        with open_regular(path, "image file") as f, pil.open(f) as opened:
            # Lets JPEG decode at a reduced scale (still >= size): large photos load much faster.
            opened.draft(mode, (size[1], size[0]))
            opened.load()
            sixteen_bit = opened.mode in _SIXTEEN_BIT_MODES
            # "F" keeps 16-bit precision until the values are scaled.
            image = opened.convert("F") if sixteen_bit else _flatten_alpha(opened).convert(mode)
    except (OSError, ValueError, SyntaxError, pil.DecompressionBombError) as error:
        # Pillow signals broken files with any of these (SyntaxError for some PNG chunk errors).
        if isinstance(error, NotARegularFileError):
            raise ImageReadError(str(error)) from error
        raise ImageReadError(f"cannot read image file {path}: {error}") from error
    resized = pil_cover_crop(image, size)
    if sixteen_bit:
        # Bicubic resampling can overshoot the 16-bit range slightly; that is ours to clip.
        grey = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 65535.0)  # (H, W)
        tensor = to_model_range(torch.from_numpy(grey).unsqueeze(0), (0.0, 65535.0))
        return to_channels(tensor, channels)
    pixels = np.array(resized, dtype=np.uint8)  # (H, W) or (H, W, 3), a writable copy
    tensor = torch.from_numpy(pixels)
    tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)  # (C, H, W)
    return to_model_range(tensor, what=f"image file {path}")


def _flatten_alpha(image: Image) -> Image:
    """Composite transparent images onto white, as image viewers show them.

    Converting RGBA straight to RGB would expose whatever colour transparent pixels happen to
    store (often black), which is not what the picture looks like.
    """
    from PIL import Image as PILImage

    has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image
    rgba = image.convert("RGBA")
    background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
    return PILImage.alpha_composite(background, rgba)


class ImageFolderDataset(ImageDataset):
    """Image files under a folder as a dataset of ``(image, label)`` items.

    ``image`` is float32 ``(channels, H, W)`` in [-1, 1]; ``label`` is the int64 index of the
    image's subfolder in :attr:`classes`, or -1 when the dataset is unlabelled. Files are
    decoded when read, so an unreadable file raises :class:`ImageReadError` naming it then.

    Args:
        root: the folder.
        image_size: output ``S`` or ``(H, W)``.
        channels: 1 (greyscale, Pillow "L") or 3 (RGB).
        labels: None to use subfolder classes when every image is in one, True to require
            them (error otherwise), False to ignore them.
        extensions: file name endings to include, e.g. ``{".png"}``.

    Attributes:
        files: the image paths, in item order.
        classes: sorted subfolder names, or None when unlabelled.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int | tuple[int, int],
        *,
        channels: int = 3,
        labels: bool | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
    ) -> None:
        require("PIL.Image", "Pillow", "Reading image folders")
        self.root = Path(root).expanduser()
        self.image_size = as_size(image_size)
        self.channels = check_channels(channels)
        self.files = find_images(self.root, extensions)
        parts = [f.relative_to(self.root).parts for f in self.files]
        at_top = [str(self.files[i]) for i, p in enumerate(parts) if len(p) == 1]
        if labels and at_top:
            raise ValueError(
                f"labels=True needs every image in a class subfolder of {self.root}, but "
                f"{len(at_top)} lie directly in it, e.g. {at_top[0]}"
            )
        if labels is False or at_top:
            self.classes: tuple[str, ...] | None = None
            self.targets = [NO_LABEL] * len(self.files)
        else:
            self.classes = tuple(sorted({p[0] for p in parts}))
            index = {name: i for i, name in enumerate(self.classes)}
            self.targets = [index[p[0]] for p in parts]
        self.num_classes = None if self.classes is None else len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Item:
        image = load_image(self.files[index], self.image_size, self.channels)
        return image, torch.tensor(self.targets[index], dtype=torch.int64)
