"""Tests of diffusionkit.data: value scaling, built-in datasets, IDX files, folders, resolver."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from diffusionkit.data import (
    NO_LABEL,
    DatasetAdapter,
    DigitsDataset,
    DownloadError,
    FashionMNISTDataset,
    IDXFormatError,
    ImageFolderDataset,
    ImageReadError,
    PairedFolderDataset,
    TensorImageDataset,
    UnpairedFilesError,
    digits_split_indices,
    load_dataset,
    read_idx,
    to_model_range,
)
from diffusionkit.data import fashion_mnist as fmnist
from diffusionkit.data.download import download_file
from diffusionkit.data.folder import load_image

Image = pytest.importorskip("PIL.Image")


# --- scaling -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "value_range"),
    [
        (torch.tensor([0, 17, 255], dtype=torch.uint8), None),
        (torch.tensor([0.0, 0.3, 1.0]), (0, 1)),
        (torch.tensor([0.0, 5.0, 16.0], dtype=torch.float64), (0, 16)),
        (np.array([3, 7, 9], dtype=np.int64), (3, 9)),
    ],
)
def test_to_model_range_maps_ends_exactly(data, value_range):
    out = to_model_range(data, value_range)
    assert out.dtype == torch.float32
    assert out[0].item() == -1.0
    assert out[-1].item() == 1.0
    assert -1.0 < out[1].item() < 1.0


def test_to_model_range_is_linear():
    x = torch.arange(256, dtype=torch.uint8)
    torch.testing.assert_close(to_model_range(x), x.float() / 127.5 - 1.0)


def test_to_model_range_rejects_values_outside_range_with_min_max_and_advice():
    with pytest.raises(ValueError, match=r"min=0 and max=255.*value_range=\(0, 255\)"):
        to_model_range(torch.tensor([0.0, 255.0]), (0, 1))


def test_to_model_range_needs_range_for_float_data():
    with pytest.raises(TypeError, match="value_range"):
        to_model_range(torch.tensor([0.0, 1.0]))


# --- tensors and wrapped datasets ----------------------------------------------------------


def _images(low: float, high: float, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g) * (high - low) + low
    x.view(n, -1)[:, 0] = low  # make sure both ends occur
    x.view(n, -1)[:, 1] = high
    return x


def test_tensor_dataset_accepts_model_range_and_yields_standard_items():
    data = TensorImageDataset(_images(-1, 1))
    image, label = data[2]
    assert image.shape == (1, 4, 4) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.shape == () and label.item() == NO_LABEL
    assert (data.image_size, data.channels, data.num_classes, len(data)) == ((4, 4), 1, None, 6)
    images, labels = next(iter(DataLoader(data, batch_size=4)))
    assert images.shape == (4, 1, 4, 4) and labels.shape == (4,)


@pytest.mark.parametrize(("high", "advice"), [(255.0, r"\(0, 255\)"), (1.0, r"\(0, 1\)")])
def test_tensor_dataset_rejects_unscaled_data_with_helpful_message(high, advice):
    with pytest.raises(ValueError, match=rf"max={high:g}.*value_range={advice}"):
        TensorImageDataset(_images(0, high))


@pytest.mark.parametrize("high", [255.0, 1.0])
def test_tensor_dataset_converts_with_value_range(high):
    data = TensorImageDataset(_images(0, high), value_range=(0, high))
    assert data.images.min().item() == -1.0 and data.images.max().item() == 1.0


def test_tensor_dataset_uint8_is_taken_as_0_255():
    x = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    x[0, 0, 0, 0] = 255
    data = TensorImageDataset(x)
    assert data.images.min().item() == -1.0 and data.images.max().item() == 1.0


def test_tensor_dataset_explicit_model_range_accepts_non_negative_data():
    data = TensorImageDataset(_images(0, 1), value_range=(-1, 1))
    torch.testing.assert_close(data.images, _images(0, 1))


def test_tensor_dataset_rejects_nan_and_bad_shapes():
    x = _images(-1, 1)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        TensorImageDataset(x)
    with pytest.raises(ValueError, match="channels-last"):
        TensorImageDataset(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match="unsqueeze"):
        TensorImageDataset(torch.zeros(2, 8, 8))


def test_tensor_dataset_labels_and_num_classes():
    labels = torch.tensor([0, 2, 1, 2, 0, 1])
    data = TensorImageDataset(_images(-1, 1), labels)
    assert data.num_classes == 3 and data[1][1].item() == 2
    with pytest.raises(ValueError, match="out of range"):
        TensorImageDataset(_images(-1, 1), labels, num_classes=2)


class _ListDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_adapter_accepts_tensors_and_tuples():
    images = _images(-1, 1)
    plain = DatasetAdapter(_ListDataset(list(images)))
    assert plain[0][1].item() == NO_LABEL and plain.image_size == (4, 4)
    labelled = DatasetAdapter(_ListDataset([(im, i % 3) for i, im in enumerate(images)]))
    assert labelled[4][1].item() == 1 and labelled[4][1].dtype == torch.int64
    torch.testing.assert_close(labelled[4][0], images[4])


def test_dataset_adapter_catches_unit_range_and_bad_items():
    with pytest.raises(ValueError, match=r"value_range=\(0, 1\)"):
        DatasetAdapter(_ListDataset(list(_images(0, 1))))
    converted = DatasetAdapter(_ListDataset(list(_images(0, 1))), value_range=(0, 1))
    assert converted[0][0].min().item() == -1.0
    items = list(_images(-1, 1, n=12))
    items[10] = items[10] * 255  # beyond the items inspected at construction
    data = DatasetAdapter(_ListDataset(items))
    with pytest.raises(ValueError, match="item 10's image has min=-255 and max=255"):
        data[10]


def test_dataset_adapter_reads_image_cond_pairs():
    # issue 14: (image, cond) items failed with "RuntimeError: shape '[]' is invalid"
    images, conds = _images(-1, 1), torch.rand(6, 2, 4, 4) * 3  # cond in any scale
    data = DatasetAdapter(_ListDataset(list(zip(images, conds, strict=True))))
    assert data.cond_channels == 2 and data.num_classes is None
    image, label, cond = data[3]
    torch.testing.assert_close(image, images[3])
    torch.testing.assert_close(cond, conds[3])  # passed on as given
    assert label.item() == NO_LABEL
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert [tuple(t.shape) for t in batch] == [(4, 1, 4, 4), (4,), (4, 2, 4, 4)]


def test_dataset_adapter_reads_mappings_with_label_and_cond():
    images, conds = _images(-1, 1), torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    items = [
        {"image": im, "label": i % 3, "cond": c}
        for i, (im, c) in enumerate(zip(images, conds, strict=True))
    ]
    data = DatasetAdapter(_ListDataset(items), num_classes=3)
    _, label, cond = data[4]
    assert label.item() == 1 and data.cond_channels == 1
    torch.testing.assert_close(cond, conds[4].float() / 127.5 - 1)  # uint8 mapped like images
    plain = DatasetAdapter(_ListDataset([{"image": im, "label": 2} for im in images]))
    assert len(plain[0]) == 2 and plain[0][1].item() == 2 and plain.cond_channels == 0


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([{"image": x, "conditioning": x} for x in _images(-1, 1)], r"keys \['conditioning'\]"),
        ([{"img": x} for x in _images(-1, 1)], "has no 'image' key"),
        ([(x, torch.zeros(3)) for x in _images(-1, 1)], "second element has shape \\(3,\\)"),
        ([(x, torch.zeros(1, 5, 5)) for x in _images(-1, 1)], "the image's height and width"),
        ([(x, torch.zeros(1, 4, 4, dtype=torch.int32)) for x in _images(-1, 1)], "int32"),
        ([(x, torch.full((1, 4, 4), math.nan)) for x in _images(-1, 1)], "NaN"),
    ],
)
def test_dataset_adapter_names_bad_conditioning_items(items, message):
    with pytest.raises((ValueError, TypeError), match=message):
        DatasetAdapter(_ListDataset(items))


def test_dataset_adapter_requires_every_item_to_carry_a_cond_or_none():
    images = _images(-1, 1, n=12)
    items = [(x, torch.zeros(1, 4, 4)) for x in images]
    items[10] = (images[10], 4)  # beyond the probed items
    data = DatasetAdapter(_ListDataset(items))
    with pytest.raises(ValueError, match="item 10 has no cond, but item 0 has one"):
        data[10]


def test_tensor_dataset_with_cond():
    images, conds = _images(-1, 1), torch.randn(6, 3, 4, 4)
    data = TensorImageDataset(images, torch.arange(6) % 2, cond=conds)
    _, label, cond = data[5]
    assert data.cond_channels == 3 and label.item() == 1
    torch.testing.assert_close(cond, conds[5])
    assert "cond_channels=3" in repr(data)
    with pytest.raises(ValueError, match=r"cond must be shaped \(6, C_cond, 4, 4\)"):
        TensorImageDataset(images, cond=conds[:5])
    same = load_dataset(images, cond=conds)
    assert same.cond_channels == 3 and len(same[0]) == 3


def _pairs(root: Path, names: list[str], cond_names: list[str]) -> tuple[Path, Path]:
    for name in names:
        _save(root / "hr" / name, np.full((8, 8), 255, dtype=np.uint8))
    for name in cond_names:
        _save(root / "lr" / name, np.zeros((4, 4), dtype=np.uint8))
    return root / "hr", root / "lr"


def test_paired_folders_pair_by_relative_name_and_upsample_the_cond(tmp_path):
    hr, lr = _pairs(tmp_path, ["a/1.png", "a/2.png", "b/1.png"], ["b/1.jpg", "a/2.png", "a/1.bmp"])
    data = PairedFolderDataset(hr, lr, 8, channels=1)
    assert data.classes == ("a", "b") and data.cond_channels == 1 and len(data) == 3
    assert [p.relative_to(lr).as_posix() for p in data.cond_files] == [
        "a/1.bmp",
        "a/2.png",
        "b/1.jpg",
    ]
    image, label, cond = data[2]
    assert label.item() == 1 and (image == 1).all()
    assert cond.shape == (1, 8, 8) and (cond == -1).all()  # 4x4 read at the image size
    rgb = load_dataset(hr, image_size=8, channels=1, cond=lr, cond_channels=3)
    assert rgb[0][2].shape == (3, 8, 8)


def test_unpaired_files_are_named(tmp_path):
    names = [f"x/{i}.png" for i in range(8)]
    hr, lr = _pairs(tmp_path, names, [*names[:1], "y/extra.png"])
    with pytest.raises(UnpairedFilesError) as caught:
        PairedFolderDataset(hr, lr, 8, channels=1)
    error = caught.value
    assert error.without_cond == names[1:] and error.without_image == ["y/extra.png"]
    message = str(error)
    assert (
        "7 images in" in message
        and "x/1.png, x/2.png, x/3.png, x/4.png, x/5.png and 2 more" in message
    )
    assert "1 conditioning image in" in message and "y/extra.png" in message
    _save(tmp_path / "lr" / "x" / "0.jpg", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="pair with the same name 'x/0'"):
        PairedFolderDataset(hr, lr, 8, channels=1)


def test_load_dataset_with_cond_needs_matching_kinds(tmp_path):
    hr, lr = _pairs(tmp_path, ["1.png"], ["1.png"])
    with pytest.raises(ValueError, match="not the built-in 'digits'"):
        load_dataset("digits", cond=lr)
    with pytest.raises(TypeError, match="a folder with a folder"):
        load_dataset(hr, image_size=8, cond=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"conditioning image folder .* does not exist"):
        load_dataset(hr, image_size=8, cond=tmp_path / "missing")


# --- digits --------------------------------------------------------------------------------


def test_digits_shape_labels_and_range():
    data = DigitsDataset(split="all")
    assert len(data) == 1797 and data.image_size == (16, 16) and data.channels == 1
    assert data.num_classes == 10
    assert set(data.labels.tolist()) == set(range(10))
    image, label = data[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    assert label.dtype == torch.int64
    assert data.images.min().item() == -1.0 and data.images.max().item() == 1.0


def test_digits_native_values_match_sklearn():
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float()
    native = DigitsDataset(8)
    torch.testing.assert_close(native.images[:, 0], raw / 8 - 1)


@pytest.mark.parametrize(("size", "top", "left"), [(16, 4, 4), (11, 1, 1), ((12, 9), 2, 0)])
def test_digits_padding_is_centred_on_background(size, top, left):
    native = DigitsDataset(8).images
    padded = DigitsDataset(size).images
    h, w = padded.shape[-2:]
    inner = padded[..., top : top + 8, left : left + 8]
    torch.testing.assert_close(inner, native)
    outside = padded.clone()
    outside[..., top : top + 8, left : left + 8] = -1.0
    assert (outside == -1.0).all()
    assert h - 8 - top >= top and w - 8 - left >= left  # an odd extra row goes to the bottom


def test_digits_resize_and_rgb():
    data = DigitsDataset(4, fit="resize", channels=3)
    assert data.images.shape == (1797, 3, 4, 4)
    assert data.images.min() >= -1 and data.images.max() <= 1
    assert torch.equal(data.images[:, 0], data.images[:, 2])
    with pytest.raises(ValueError, match="resize"):
        DigitsDataset(4)


def test_digits_split_is_fixed_stratified_and_disjoint():
    labels = DigitsDataset(8).labels.numpy()
    train = digits_split_indices(labels, "train")
    heldout = digits_split_indices(labels, "heldout")
    assert (len(train), len(heldout)) == (1438, 359)
    assert set(train).isdisjoint(heldout) and len(set(train) | set(heldout)) == 1797
    for cls in range(10):
        share = np.mean(labels[heldout] == cls) / np.mean(labels == cls)
        assert abs(share - 1) < 0.05
    np.testing.assert_array_equal(heldout, digits_split_indices(labels, "heldout"))
    assert not np.array_equal(heldout, digits_split_indices(labels, "heldout", seed=1))
    # Pinned so that a change of the hash (and so of every benchmark) cannot pass unnoticed.
    assert heldout[:5].tolist() == _PINNED_HELDOUT_HEAD
    assert len(DigitsDataset(split="heldout")) == 359


_PINNED_HELDOUT_HEAD = [1, 4, 18, 25, 27]


# --- IDX files -----------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = _idx_bytes(array)
    path = tmp_path / "x.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    np.testing.assert_array_equal(read_idx(path, expected_dtype=np.uint8, expected_ndim=3), array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([-5, 1, 70000], dtype=np.int32)
    (tmp_path / "x").write_bytes(_idx_bytes(array, code=0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "x"), array)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\0", "trailing"),
        (lambda b: b[:6], "truncated header"),
        (lambda b: b"\1" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x42" + b[3:], "not an IDX file"),
        (lambda b: gzip.compress(b)[:-10], "gzip"),
    ],
)
def test_read_idx_rejects_corrupted_files(tmp_path, mangle, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(mangle(_idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))))
    with pytest.raises(IDXFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_checks_expected_dimensions(tmp_path):
    (tmp_path / "x").write_bytes(_idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(IDXFormatError, match="expected 3"):
        read_idx(tmp_path / "x", expected_ndim=3)


# --- Fashion-MNIST -------------------------------------------------------------------------


def _write_fashion(folder: Path, n: int = 5, *, train: bool = True, labels_n: int | None = None):
    images = (np.arange(n * 28 * 28) % 256).astype(np.uint8).reshape(n, 28, 28)
    labels = (np.arange(labels_n or n) % 10).astype(np.uint8)
    prefix = "train" if train else "t10k"
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    return images, labels


def test_fashion_mnist_from_root(tmp_path):
    images, labels = _write_fashion(tmp_path, train=False)
    data = FashionMNISTDataset(root=tmp_path, train=False, download=False)
    assert len(data) == 5 and data.image_size == (28, 28) and data.num_classes == 10
    image, label = data[3]
    torch.testing.assert_close(image[0], torch.from_numpy(images[3]).float() / 127.5 - 1)
    assert label.item() == labels[3]
    padded = FashionMNISTDataset(32, channels=3, root=tmp_path, train=False, download=False)
    assert padded[0][0].shape == (3, 32, 32) and (padded[0][0][:, :2] == -1).all()


def test_fashion_mnist_rejects_mismatched_files(tmp_path):
    _write_fashion(tmp_path, labels_n=4)
    with pytest.raises(IDXFormatError, match="5 images but"):
        FashionMNISTDataset(root=tmp_path, download=False)


def test_fashion_mnist_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        FashionMNISTDataset(root=tmp_path, download=False)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_fashion_mnist_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "MIRRORS", (_closed_port_url(),))
    monkeypatch.setattr(fmnist, "SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(DownloadError, match="dataset-fashion-mnist") as info:
        FashionMNISTDataset(cache_dir=tmp_path / "cache")
    assert "127.0.0.1" in str(info.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no partial file


def test_download_verifies_checksum_and_is_atomic(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload" * 100)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(DownloadError, match="md5 checksum mismatch"):
        download_file([source.as_uri()], dest, md5="0" * 32)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a temporary one
    out = download_file([_closed_port_url() + "x", source.as_uri()], dest, md5=md5, sha256=sha256)
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.skipif(
    not fmnist.SYSTEM_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist not installed (/usr/share/datasets)",
)
def test_fashion_mnist_debian_files():
    data = load_dataset("fashion-mnist", train=False, root=fmnist.SYSTEM_DIR)
    assert len(data) == 10_000 and data.image_size == (28, 28) and data.channels == 1
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    mean = data.images.float().mean().item() / 255
    assert abs(mean - 0.2868) < 0.002
    image, _ = data[0]
    assert image.min().item() == -1.0 and image.max().item() <= 1.0


# --- image folders -------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _folder_with_classes(root: Path) -> None:
    # RGB 20 wide x 10 high, outer 3 columns blue, the rest red: resized to 8 high (16 wide),
    # the centre crop keeps only red.
    wide = np.zeros((10, 20, 3), dtype=np.uint8)
    wide[:, :] = (255, 0, 0)
    wide[:, :3] = wide[:, 17:] = (0, 0, 255)
    _save(root / "cat" / "a.png", wide)
    _save(root / "dog" / "nested" / "b.PNG", np.full((7, 5), 255, dtype=np.uint8))  # greyscale
    _save(root / "ant" / "c.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "._a.png").write_bytes(b"macOS resource fork")


def test_folder_rgb_labels_and_centre_crop(tmp_path):
    _folder_with_classes(tmp_path)
    data = ImageFolderDataset(tmp_path, 8, channels=3)
    assert data.classes == ("ant", "cat", "dog") and data.num_classes == 3
    assert [f.name for f in data.files] == ["c.jpg", "a.png", "b.PNG"]
    assert data.targets == [0, 1, 2]
    image, label = data[1]
    assert image.shape == (3, 8, 8) and label.item() == 1
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8)
    torch.testing.assert_close(image, red, atol=0.02, rtol=0)
    grey, _ = data[2]
    assert grey.shape == (3, 8, 8) and (grey == 1.0).all()


def test_folder_greyscale_non_square_target(tmp_path):
    _folder_with_classes(tmp_path)
    data = load_dataset(tmp_path, image_size=(6, 4), channels=1)
    images = torch.stack([data[i][0] for i in range(len(data))])
    assert images.shape == (3, 1, 6, 4)
    assert images.min() >= -1 and images.max() <= 1


def test_folder_without_subfolders_is_unlabelled(tmp_path):
    _save(tmp_path / "x.png", np.zeros((4, 4, 3), dtype=np.uint8))
    _save(tmp_path / "sub" / "y.png", np.zeros((4, 4, 3), dtype=np.uint8))
    data = ImageFolderDataset(tmp_path, 4)
    assert data.num_classes is None and data[0][1].item() == NO_LABEL
    with pytest.raises(ValueError, match="directly in it"):
        ImageFolderDataset(tmp_path, 4, labels=True)


def test_folder_transparency_and_16_bit(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    _save(tmp_path / "t.png", rgba, "RGBA")
    deep = np.full((4, 4), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    _save(tmp_path / "d.png", deep)
    data = ImageFolderDataset(tmp_path, 4, channels=1)
    by_name = {f.name: data[i][0] for i, f in enumerate(data.files)}
    assert (by_name["t.png"] == 1.0).all()  # composited onto white
    torch.testing.assert_close(by_name["d.png"], torch.full((1, 4, 4), 0.0), atol=1e-3, rtol=0)


def test_folder_unreadable_file_is_named(tmp_path):
    _save(tmp_path / "good.png", np.zeros((4, 4, 3), dtype=np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = ImageFolderDataset(tmp_path, 4)
    index = [f.name for f in data.files].index("broken.png")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        data[index]


def test_folder_empty_or_missing(tmp_path):
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    _save(tmp_path / "empty" / ".hidden" / "x.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderDataset(tmp_path / "empty", 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 4)


@pytest.fixture
def fail_instead_of_hanging():
    """Turn a hang (a FIFO opened for reading waits for a writer forever) into a failure."""
    import signal

    def hung(signum, frame):
        raise TimeoutError("hung: reading the folder blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_folder_reads_only_regular_files(tmp_path, fail_instead_of_hanging, capsys):
    # finding 8: a FIFO named x.png hung `train` forever
    from diffusionkit.cli import main

    _save(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
    fifo = tmp_path / "images" / "x.png"
    os.mkfifo(fifo)
    os.symlink(tmp_path / "missing.png", tmp_path / "images" / "dangling.png")
    data = ImageFolderDataset(tmp_path / "images", 8)
    assert [f.name for f in data.files] == ["a.png"]
    with pytest.raises(ImageReadError, match=r"x\.png is a FIFO"):
        load_image(fifo, (8, 8), 3)  # a path swapped for a FIFO after listing fails too
    code = main(["train", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "run"),
                 "--image-size", "8", "--dim", "8", "--dim-mults", "1,2", "--attn-levels",
                 "none", "--groups", "4", "--timesteps", "20", "--batch-size", "1", "--steps",
                 "1", "--sample-count", "1", "--sample-every", "0", "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err


# --- resolver ------------------------------------------------------------------------------


def test_load_dataset_builtins_and_aliases():
    train = load_dataset("DIGITS")
    heldout = load_dataset("digits", train=False, image_size=8)
    assert isinstance(train, DigitsDataset) and len(train) == 1438 and train.image_size == (16, 16)
    assert len(heldout) == 359 and heldout.image_size == (8, 8)
    assert load_dataset("digits", channels=3).channels == 3


def test_load_dataset_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="digits, fashion-mnist"):
        load_dataset("cifar-11")


def test_load_dataset_user_data_checks():
    data = load_dataset(_images(0, 255), value_range=(0, 255))
    assert isinstance(data, TensorImageDataset)
    with pytest.raises(ValueError, match="image_size 8x8"):
        load_dataset(_images(-1, 1), image_size=8)
    with pytest.raises(ValueError, match="3 were"):
        load_dataset(_images(-1, 1), channels=3)
    assert isinstance(load_dataset(_ListDataset(list(_images(-1, 1)))), DatasetAdapter)
    assert load_dataset(data) is data
    with pytest.raises(ValueError, match="value_range applies"):
        load_dataset("digits", value_range=(0, 1))
    with pytest.raises(TypeError, match="cannot make a dataset"):
        load_dataset(42)  # type: ignore[arg-type]


def test_load_dataset_folder_needs_image_size(tmp_path):
    _save(tmp_path / "x.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="image_size is required"):
        load_dataset(str(tmp_path))
    assert isinstance(load_dataset(str(tmp_path), image_size=4), ImageFolderDataset)


# --- optional dependencies -----------------------------------------------------------------


def test_imports_stay_lazy():
    code = (
        "import sys, diffusionkit\n"
        "assert 'diffusionkit.data' not in sys.modules, 'diffusionkit imported its data package'\n"
        "import diffusionkit.data\n"
        "bad = [m for m in ('PIL', 'sklearn') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    _save(tmp_path / "x.png", np.zeros((4, 4), dtype=np.uint8))
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(ImportError, match=r"diffusionkit\[data\]"):
        ImageFolderDataset(tmp_path, 4)
