"""Two folders of images paired by file name: training targets and their conditioning images.

For an image-to-image task (super-resolution, colorization, restoration) the data are pairs:
``root/a/001.png`` is the image to learn, ``cond_root/a/001.png`` the conditioning image the
network sees beside it. The folders must hold the same relative file names; the extensions
may differ (``001.png`` pairs with ``001.jpg``), so that the key of a file is its path relative
to its folder without the extension. A file without a partner is an error that names it, so a
missing or misnamed file is found before training, not as a silently smaller dataset.

Both images are read as :class:`~diffusionkit.data.folder.ImageFolderDataset` reads images:
resized to cover ``image_size`` and centre-cropped, so a low-resolution conditioning image is
upsampled (bicubic) to the image size when it is read. Class labels come from the image
folder's subfolders, as in ``ImageFolderDataset``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from diffusionkit.data.base import CondItem, ImageDataset, check_channels
from diffusionkit.data.folder import IMAGE_EXTENSIONS, ImageFolderDataset, find_images, load_image

__all__ = ["PairedFolderDataset", "UnpairedFilesError", "pair_files"]

# how many unpaired file names an error message lists
_SHOWN = 5


class UnpairedFilesError(ValueError):
    """Files of two folders that should pair by name do not.

    Attributes:
        without_cond: image files with no conditioning image (relative paths).
        without_image: conditioning image files with no image (relative paths).
    """

    def __init__(self, message: str, without_cond: list[str], without_image: list[str]) -> None:
        super().__init__(message)
        self.without_cond = without_cond
        self.without_image = without_image


def _keys(root: Path, files: list[Path]) -> dict[str, Path]:
    """``relative path without extension -> file``, refusing two files with one key."""
    out: dict[str, Path] = {}
    for path in files:
        key = path.relative_to(root).with_suffix("").as_posix()
        if key in out:
            raise ValueError(
                f"{out[key]} and {path} pair with the same name {key!r} (files pair by their "
                "path without the extension): keep one of them"
            )
        out[key] = path
    return out


def _listing(root: Path, keys: list[str], files: dict[str, Path]) -> str:
    shown = ", ".join(files[k].relative_to(root).as_posix() for k in keys[:_SHOWN])
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{shown}{more}"


def pair_files(
    root: str | os.PathLike[str],
    files: list[Path],
    cond_root: str | os.PathLike[str],
    cond_files: list[Path],
) -> list[Path]:
    """The conditioning image of each file, in the order of ``files``.

    Args:
        root: the folder of the images.
        files: image files under ``root``.
        cond_root: the folder of the conditioning images.
        cond_files: image files under ``cond_root``.

    Returns:
        ``[cond_file for each file]``, paired by relative path without the extension.

    Raises:
        UnpairedFilesError: some files have no partner; the message names up to five of each
            side and counts the rest.
        ValueError: two files of one folder differ only in their extension.
    """
    root, cond_root = Path(root), Path(cond_root)
    images = _keys(root, files)
    conds = _keys(cond_root, cond_files)
    without_cond = [k for k in images if k not in conds]
    without_image = [k for k in conds if k not in images]
    if without_cond or without_image:
        parts = []
        if without_cond:
            parts.append(
                f"{len(without_cond)} image{'s' if len(without_cond) > 1 else ''} in {root} "
                f"{'have' if len(without_cond) > 1 else 'has'} no conditioning image in "
                f"{cond_root}: {_listing(root, without_cond, images)}"
            )
        if without_image:
            parts.append(
                f"{len(without_image)} conditioning image{'s' if len(without_image) > 1 else ''} "
                f"in {cond_root} {'have' if len(without_image) > 1 else 'has'} no image in "
                f"{root}: {_listing(cond_root, without_image, conds)}"
            )
        raise UnpairedFilesError(
            "; ".join(parts)
            + ". Images pair with conditioning images by their path relative to their folder, "
            "without the extension (a/001.png with a/001.jpg): give every image its partner",
            [images[k].relative_to(root).as_posix() for k in without_cond],
            [conds[k].relative_to(cond_root).as_posix() for k in without_image],
        )
    return [conds[k] for k in images]


class PairedFolderDataset(ImageDataset):
    """Images under ``root`` with conditioning images under ``cond_root``, paired by name.

    Items are ``(image, label, cond)``: ``image`` float32 ``(channels, H, W)`` in [-1, 1],
    ``label`` the int64 class of its subfolder (or -1, as in :class:`ImageFolderDataset`),
    ``cond`` float32 ``(cond_channels, H, W)`` in [-1, 1], read from the paired file and
    brought to ``image_size`` the same way (a smaller conditioning image is upsampled).

    Args:
        root: the folder of the images to learn.
        cond_root: the folder of the conditioning images, with the same relative file names
            (see the module docstring).
        image_size: output ``S`` or ``(H, W)`` of both.
        channels: 1 (greyscale) or 3 (RGB) for the images.
        cond_channels: 1 or 3 for the conditioning images; ``None``: ``channels``.
        labels: class labels from ``root``'s subfolders: ``None`` when every image is in one,
            ``True`` to require them, ``False`` to ignore them.
        extensions: file name endings to include, in both folders.

    Raises:
        UnpairedFilesError: a file of either folder has no partner (named in the message).

    Attributes:
        files: the image paths, in item order.
        cond_files: the conditioning image of each, in the same order.
        classes: sorted subfolder names of ``root``, or None when unlabelled.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        cond_root: str | os.PathLike[str],
        image_size: int | tuple[int, int],
        *,
        channels: int = 3,
        cond_channels: int | None = None,
        labels: bool | None = None,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
    ) -> None:
        extensions = tuple(extensions)
        self.images = ImageFolderDataset(
            root, image_size, channels=channels, labels=labels, extensions=extensions
        )
        self.root = self.images.root
        self.cond_root = Path(cond_root).expanduser()
        self.image_size = self.images.image_size
        self.channels = self.images.channels
        self.cond_channels = check_channels(channels if cond_channels is None else cond_channels)
        self.files = self.images.files
        self.classes = self.images.classes
        self.num_classes = self.images.num_classes
        self.cond_files = pair_files(
            self.root, self.files, self.cond_root, find_images(self.cond_root, extensions)
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> CondItem:
        image, label = self.images[index][:2]
        cond = load_image(self.cond_files[index], self.image_size, self.cond_channels)
        return image, label, cond
