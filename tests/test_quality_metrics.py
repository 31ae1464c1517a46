"""Tests for the benchmarks' quality scoring: their fixed splits, the shipped classifiers on them,
calibration, and the lucidrains import (the metrics themselves: tests/test_metrics.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# `benchmarks` is a top-level folder of the repository, not part of the installed package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.quality import calibration, peers  # noqa: E402
from diffusionkit.metrics import extract_features, load_classifier  # noqa: E402

# --------------------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from benchmarks.quality.digits import digits_split

    return digits_split()


def test_digits_split_is_the_fixed_stratified_split(digits):
    assert digits.train_images.shape == (1257, 1, 8, 8)
    assert digits.test_images.shape == (540, 1, 8, 8)
    assert digits.train_images.min() == -1.0 and digits.train_images.max() == 1.0
    per_class = torch.bincount(torch.cat([digits.train_labels, digits.test_labels]))
    test_per_class = torch.bincount(digits.test_labels)
    assert ((test_per_class - 0.3 * per_class).abs() <= 1).all()  # stratified
    # Pinned: the shipped classifier was trained on exactly this split (random_state=0).
    assert digits.test_labels[:16].tolist() == [1, 4, 5, 6, 9, 1, 2, 2, 2, 0, 7, 5, 4, 8, 6, 6]
    assert float(digits.test_images.sum()) == -13507.75


def test_shipped_digits_classifier_loads_and_classifies_held_out_digits(digits):
    model = load_classifier("digits")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        acc = (model(digits.test_images).argmax(1) == digits.test_labels).double().mean()
    assert acc > 0.9
    feats = extract_features(model, digits.test_images[:10])
    assert feats.shape == (10, model.config.feature_dim) and feats.dtype == torch.float64
    with pytest.raises(ValueError, match="expected images"):
        model.features(torch.zeros(2, 1, 28, 28))


def test_fashion_classifier_loads_if_data_present():
    from benchmarks.quality.fashion import FASHION_MNIST_DIR, read_idx

    labels = FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not labels.is_file():
        pytest.skip("dataset-fashion-mnist not installed")
    y = torch.from_numpy(read_idx(labels).astype(np.int64))
    x = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert x.shape == (10_000, 28, 28) and y.shape == (10_000,)
    images = torch.from_numpy(x[:2000].astype(np.float32) / 127.5 - 1).unsqueeze(1)
    model = load_classifier("fashion-mnist")
    with torch.no_grad():
        acc = (model(images).argmax(1) == y[:2000]).double().mean()
    assert acc > 0.8


# --------------------------------------------------------------------------- image-level scoring


def test_calibration_orders_real_gaussian_and_noise(digits):
    cal = calibration("digits", n_samples=540, seed=0, kid_subsets=10)
    real, gauss, noise = cal["train real"], cal["fitted gaussian"], cal["uniform noise"]
    assert real["fd"] < 0.1 * gauss["fd"]
    assert gauss["fd"] < noise["fd"]
    assert real["kid"] < 0.1 * gauss["kid"] < noise["kid"]
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert real["coverage"] > gauss["coverage"] > noise["coverage"]


# --------------------------------------------------------------------------- lucidrains import


def test_torchvision_stand_in_raises_a_clear_error_only_when_used():
    modules = peers._make_stand_in()
    assert not hasattr(modules["torchvision"], "__path__")  # dunders behave normally
    with pytest.raises(peers.TorchvisionUnavailableError, match="Trainer need a working"):
        modules["torchvision.utils"].save_image
    with pytest.raises(ImportError):  # the error is an ImportError subclass
        modules["torchvision"].transforms.Compose


@pytest.mark.skipif(
    importlib.util.find_spec("denoising_diffusion_pytorch") is None,
    reason="denoising_diffusion_pytorch not installed",
)
def test_lucidrains_unet_and_gaussian_diffusion_train_and_sample_without_torchvision():
    # Its declared dependencies other than torchvision, all imported at module level.
    for dependency in ("scipy", "accelerate", "ema_pytorch", "einops", "PIL", "tqdm"):
        pytest.importorskip(dependency)
    torchvision_before = "torchvision" in sys.modules
    unet_cls, diffusion_cls = peers.import_lucidrains()
    assert ("torchvision" in sys.modules) == torchvision_before  # the stand-in does not linger
    with torch.random.fork_rng():  # lucidrains draws from the global RNG
        torch.manual_seed(0)
        diffusion = diffusion_cls(
            unet_cls(dim=16, dim_mults=(1, 2), channels=1), image_size=8, timesteps=10
        )
        loss = diffusion(torch.rand(4, 1, 8, 8))  # auto_normalize: data in [0, 1]
        loss.backward()
        samples = diffusion.sample(batch_size=2)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert samples.shape == (2, 1, 8, 8) and torch.isfinite(samples).all()
    assert samples.min() >= 0 and samples.max() <= 1
    assert unet_cls is sys.modules["denoising_diffusion_pytorch"].Unet
