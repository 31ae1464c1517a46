"""Tests for the benchmark sample-quality metrics (benchmarks/quality)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

# `benchmarks` is a top-level folder of the repository, not part of the installed package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.quality import features, metrics, peers  # noqa: E402
from benchmarks.quality.metrics import SqrtMethod  # noqa: E402

METHODS = [
    SqrtMethod.EIGH,
    pytest.param(
        SqrtMethod.SCIPY_SQRTM,
        marks=pytest.mark.skipif(
            importlib.util.find_spec("scipy") is None, reason="scipy not installed"
        ),
    ),
]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------- Frechet distance


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_matches_closed_form_for_diagonal_covariances(method):
    rng = _rng(1)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    var1, var2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    # Commuting (diagonal) covariances: (S1 S2)^{1/2} = diag(sqrt(var1 * var2)).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = metrics.frechet_distance_from_stats(mu1, np.diag(var1), mu2, np.diag(var2), method)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_frechet_distance_matches_closed_form_for_non_commuting_2x2(method):
    # For a 2x2 matrix M with non-negative eigenvalues, Tr(M^{1/2}) = sqrt(Tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    prod = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(prod) + 2 * np.sqrt(np.linalg.det(prod)))
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    got = metrics.frechet_distance_from_stats(mu1, s1, mu2, s2, method)
    assert got == pytest.approx(expected, rel=1e-10)


def test_sqrt_methods_agree_on_random_covariances():
    pytest.importorskip("scipy")
    rng = _rng(2)
    a, b = rng.normal(size=(200, 32)), rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32))
    fd_eigh = metrics.frechet_distance(a, b, SqrtMethod.EIGH)
    fd_scipy = metrics.frechet_distance(a, b, SqrtMethod.SCIPY_SQRTM)
    assert fd_eigh == pytest.approx(fd_scipy, rel=1e-8)


def test_frechet_distance_from_samples_converges_to_closed_form():
    rng = _rng(3)
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, -1.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([1.5, 1.0, 0.5])
    x = mu1 + sd1 * rng.normal(size=(50_000, 3))
    y = mu2 + sd2 * rng.normal(size=(50_000, 3))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((sd1 - sd2) ** 2)  # = 2 + 0.5 = 2.5
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("n", [500, 20])  # n = 20 < D: singular covariance
def test_frechet_distance_of_a_set_with_itself_is_zero(n):
    x = _rng(4).exponential(size=(n, 64)) * 3.0
    # Square roots of rounding-level eigenvalues limit accuracy to about sqrt(eps) * Tr(S).
    tol = 1e-6 * np.trace(np.cov(x.T))
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=tol)
    y = x + 0.5  # pure mean shift by 0.5 in each of 64 dims
    assert metrics.frechet_distance(x, y) == pytest.approx(64 * 0.25, abs=tol)


def test_frechet_distance_accepts_torch_and_numpy_alike():
    x, y = _rng(5).normal(size=(100, 8)), _rng(6).normal(size=(120, 8)) + 1
    assert metrics.frechet_distance(torch.from_numpy(x).float(), torch.from_numpy(y)) == (
        pytest.approx(metrics.frechet_distance(x.astype(np.float32), y), rel=1e-10)
    )


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        metrics.frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\[N x D\]"):
        metrics.frechet_distance(np.zeros((10, 2, 2)), np.zeros((10, 4)))


# --------------------------------------------------------------------------- KID


def test_mmd2_unbiased_matches_explicit_double_sums():
    rng = _rng(7)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.3

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    rng = _rng(8)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=500)
    shifted = metrics.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=500)
    assert abs(same.mean) < 0.01
    assert shifted.mean > 0.1
    assert shifted.mean > 10 * (abs(same.mean) + same.std)
    assert (same.subset_size, same.num_subsets) == (500, 20)


def test_kid_with_whole_sets_as_subsets_is_the_full_mmd():
    a, b = _rng(13).normal(size=(40, 4)), _rng(14).normal(size=(40, 4)) + 0.2
    kid = metrics.kernel_inception_distance(a, b, num_subsets=3, subset_size=40)
    assert kid.mean == pytest.approx(metrics.mmd2_unbiased(a, b), rel=1e-10)
    assert kid.std == pytest.approx(0.0, abs=1e-12)  # subsets drawn without replacement


def test_kid_is_reproducible_by_seed_and_clips_subset_size():
    a, b = _rng(9).normal(size=(300, 4)), _rng(10).normal(size=(50, 4))
    one = metrics.kernel_inception_distance(a, b, num_subsets=5, seed=3)
    assert one == metrics.kernel_inception_distance(a, b, num_subsets=5, seed=3)
    assert one.subset_size == 50


# --------------------------------------------------------------------------- precision / recall


def test_knn_radii_skip_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=torch.float64)
    # Distances to the others sorted: 0 -> 1,3,6,10; 1 -> 1,2,5,9; 3 -> 2,3,3,7; ...
    assert knn(x, 1) == [1.0, 1.0, 2.0, 3.0, 4.0]
    assert knn(x, 3) == [6.0, 5.0, 3.0, 5.0, 9.0]


def knn(x: torch.Tensor, k: int) -> list[float]:
    return metrics.knn_radii(x, k, batch_size=2).tolist()


def test_precision_recall_is_one_for_identical_sets_and_zero_for_disjoint():
    x = _rng(11).normal(size=(300, 8))
    assert metrics.precision_recall(x, x) == (1.0, 1.0)
    assert metrics.precision_recall(x, x + 100.0) == (0.0, 0.0)
    m = metrics.manifold_metrics(x, x)
    assert m.coverage == 1.0 and m.density >= 1.0


def test_manifold_metrics_on_a_hand_computed_example():
    real = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=torch.float64)
    fake = torch.tensor([[-1.0], [20.0], [40.0]], dtype=torch.float64)
    # k = 2: real radii [3, 2, 3, 4, 7]. -1 lies in B(0, 3) and on the boundary of B(1, 2) (balls
    # are closed); 20 and 40 lie in no real ball. Fake radii [41, 21, 41] cover every real point.
    m = metrics.manifold_metrics(real, fake, k=2)
    assert m.precision == pytest.approx(1 / 3)
    assert m.recall == 1.0
    assert m.density == pytest.approx(2 / (2 * 3))  # balls hit in total / (k * 3 fakes)
    assert m.coverage == pytest.approx(2 / 5)  # B(0, 3) and B(1, 2) hold a fake


def test_precision_recall_separate_fidelity_from_diversity():
    rng = _rng(12)
    real = rng.normal(size=(1000, 4))
    fresh = rng.normal(size=(1000, 4))
    collapsed = 0.1 * rng.normal(size=(1000, 4))  # all samples near one mode
    p_fresh, r_fresh = metrics.precision_recall(real, fresh)
    p_coll, r_coll = metrics.precision_recall(real, collapsed)
    assert p_fresh > 0.9 and r_fresh > 0.9
    assert p_coll > 0.9 and r_coll < 0.2
    assert metrics.manifold_metrics(real, collapsed).coverage < 0.2


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
    model = features.load_classifier("digits")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        acc = (model(digits.test_images).argmax(1) == digits.test_labels).double().mean()
    assert acc > 0.9
    feats = features.extract_features(model, digits.test_images[:10])
    assert feats.shape == (10, model.config.feature_dim) and feats.dtype == torch.float64
    with pytest.raises(ValueError, match="expected images"):
        model.features(torch.zeros(2, 1, 28, 28))


def _copy_asset(tmp_path: Path) -> Path:
    json_path, weights_path = features.asset_paths("digits")
    shutil.copy(json_path, tmp_path / "c.json")
    shutil.copy(weights_path, tmp_path / "c.safetensors")
    return tmp_path / "c"


def test_loading_rejects_wrong_shapes_missing_tensors_and_tampering(tmp_path):
    from safetensors.torch import load_file, save_file

    stem = _copy_asset(tmp_path)
    features.load_classifier(stem)  # the intact copy loads
    weights = stem.with_suffix(".safetensors")
    state = load_file(str(weights))

    def write(state_dict):
        save_file(state_dict, str(weights))
        record = json.loads(stem.with_suffix(".json").read_text())
        record["weights_sha256"] = features._sha256(weights)
        stem.with_suffix(".json").write_text(json.dumps(record))

    write({**state, "fc.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"fc\.bias"):
        features.load_classifier(stem)
    write({k: v for k, v in state.items() if k != "head.weight"})
    with pytest.raises(ValueError, match="missing tensors"):
        features.load_classifier(stem)
    write({**state, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected"):
        features.load_classifier(stem)
    write(state)
    save_file({**state, "fc.bias": state["fc.bias"] + 1}, str(weights))  # checksum now stale
    with pytest.raises(ValueError, match="checksum"):
        features.load_classifier(stem)


def test_fashion_classifier_loads_if_data_present():
    from benchmarks.quality.fashion import FASHION_MNIST_DIR, read_idx

    labels = FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz"
    if not labels.is_file():
        pytest.skip("dataset-fashion-mnist not installed")
    y = torch.from_numpy(read_idx(labels).astype(np.int64))
    x = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert x.shape == (10_000, 28, 28) and y.shape == (10_000,)
    images = torch.from_numpy(x[:2000].astype(np.float32) / 127.5 - 1).unsqueeze(1)
    model = features.load_classifier("fashion-mnist")
    with torch.no_grad():
        acc = (model(images).argmax(1) == y[:2000]).double().mean()
    assert acc > 0.8


# --------------------------------------------------------------------------- image-level scoring


def test_calibration_orders_real_gaussian_and_noise(digits):
    cal = metrics.calibration("digits", n_samples=540, seed=0, kid_subsets=10)
    real, gauss, noise = cal["train real"], cal["fitted gaussian"], cal["uniform noise"]
    assert real["fd"] < 0.1 * gauss["fd"]
    assert gauss["fd"] < noise["fd"]
    assert real["kid"] < 0.1 * gauss["kid"] < noise["kid"]
    assert real["precision"] > 0.8 and real["recall"] > 0.8
    assert real["coverage"] > gauss["coverage"] > noise["coverage"]


def test_score_checks_the_pixel_range(digits):
    ref = digits.test_images
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics.score(ref * 1.5, ref)
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        metrics.score((ref[:100] + 1) / 2, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.score(digits.train_images[:300], ref, kid_subsets=5)
    assert set(result) >= {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    assert result["n_samples"] == 300 and result["n_reference"] == 540


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
