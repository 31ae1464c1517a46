"""Tests for diffusionkit.metrics: feature-space distances, the shipped classifiers, scoring.

Each metric is checked against an independent reference written here: closed forms for
Gaussians, scipy's matrix square root, explicit double sums, and point sets whose answer is
known by construction.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusionkit import metrics
from diffusionkit.hub.integrity import sha256_file
from diffusionkit.metrics import SqrtMethod

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


def test_frechet_distance_matches_the_closed_form_for_gaussians_sharing_eigenvectors():
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute without being diagonal, and then
    # (S1 S2)^{1/2} = Q diag(sqrt(a b)) Q^T: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = _rng(21)
    d = 16
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.05, 4.0, d), rng.uniform(0.05, 4.0, d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = metrics.frechet_distance_from_stats(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_features():
    linalg = pytest.importorskip("scipy.linalg")
    rng = _rng(22)
    x = rng.normal(size=(400, 24))
    y = rng.normal(size=(300, 24)) @ rng.normal(size=(24, 24)) * 0.4 + 0.3
    # The reference: the formula written out with scipy's general matrix square root.
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(s_x @ s_y)
    expected = np.sum((mu_x - mu_y) ** 2) + np.trace(s_x + s_y - 2 * root.real)
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(torch.from_numpy(y), x) == pytest.approx(expected, rel=1e-9)


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


def _cubic_mmd2_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(a, b) = (a . b / D + 1)^3, one pair
    at a time."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_direct_unbiased_mmd_over_the_same_subsets():
    rng = _rng(23)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(25, 5)) * 1.3 + 0.2
    kid = metrics.kernel_inception_distance(a, b, num_subsets=4, subset_size=12, seed=5)
    # Binkowski et al. 2018, sec. 5: subsets of each set drawn without replacement, in turn.
    draw = np.random.default_rng(5)
    values = []
    for _ in range(4):
        x = a[draw.choice(len(a), 12, replace=False)]
        y = b[draw.choice(len(b), 12, replace=False)]
        values.append(_cubic_mmd2_by_loops(x, y))
    assert kid.mean == pytest.approx(np.mean(values), rel=1e-10)
    assert kid.std == pytest.approx(np.std(values), rel=1e-8)
    assert (kid.subset_size, kid.num_subsets) == (12, 4)


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


def test_manifold_metrics_on_constructed_point_sets():
    # Real points 0, 1, ..., 9 on a line: with k = 1 every real ball has radius 1.
    real = torch.arange(10, dtype=torch.float64)[:, None]
    # Three fakes among the reals (radius 2 each: their nearest fake is 2 away) and three far
    # away (radius 1), so precision is 3/6. The near fakes' balls [-1.5, 2.5], [0.5, 4.5] and
    # [2.5, 6.5] hold the reals 0..6, so recall is 7/10; each near fake lies in exactly two real
    # balls (density 6 / (1 * 6) = 1), and the real balls of 0..5 hold a fake (coverage 6/10).
    fake = torch.tensor([[0.5], [2.5], [4.5], [100.0], [101.0], [102.0]], dtype=torch.float64)
    m = metrics.manifold_metrics(real, fake, k=1, batch_size=4)
    assert (m.precision, m.recall) == (0.5, 0.7)
    assert m.density == pytest.approx(1.0) and m.coverage == pytest.approx(0.6)
    assert metrics.precision_recall(real, fake, k=1) == (0.5, 0.7)
    # The same sets in 3-D, rotated: distances, and so every metric, are unchanged.
    q, _ = np.linalg.qr(_rng(24).normal(size=(3, 3)))
    lift = torch.from_numpy(q[:, :1].T.copy())  # (1, 3)
    rotated = metrics.manifold_metrics(real @ lift, fake @ lift, k=1)
    assert (rotated.precision, rotated.recall) == (0.5, 0.7)


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


# --------------------------------------------------------------------------- shipped classifiers


def _copy_asset(tmp_path: Path) -> Path:
    json_path, weights_path = metrics.classifier_files("digits")
    shutil.copy(json_path, tmp_path / "c.json")
    shutil.copy(weights_path, tmp_path / "c.safetensors")
    return tmp_path / "c"


def test_loading_rejects_wrong_shapes_missing_tensors_and_tampering(tmp_path):
    from safetensors.torch import load_file, save_file

    stem = _copy_asset(tmp_path)
    metrics.load_classifier(stem)  # the intact copy loads
    weights = stem.with_suffix(".safetensors")
    state = load_file(str(weights))

    def write(state_dict):
        save_file(state_dict, str(weights))
        record = json.loads(stem.with_suffix(".json").read_text())
        record["weights_sha256"] = sha256_file(weights)
        stem.with_suffix(".json").write_text(json.dumps(record))

    write({**state, "fc.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"fc\.bias"):
        metrics.load_classifier(stem)
    write({k: v for k, v in state.items() if k != "head.weight"})
    with pytest.raises(ValueError, match=r"missing tensor\(s\): head\.weight"):
        metrics.load_classifier(stem)
    write({**state, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected"):
        metrics.load_classifier(stem)
    write(state)
    save_file({**state, "fc.bias": state["fc.bias"] + 1}, str(weights))  # checksum now stale
    with pytest.raises(ValueError, match="checksum"):
        metrics.load_classifier(stem)


# --------------------------------------------------------------------------- image-level scoring


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    """diffusionkit's own digits at their native 8x8: the held-out part and the training part."""
    pytest.importorskip("sklearn")
    from diffusionkit.data import load_dataset

    heldout = load_dataset("digits", image_size=8, train=False)
    train = load_dataset("digits", image_size=8, train=True)
    return {
        "test_images": heldout.images,
        "test_labels": heldout.labels,
        "train_images": train.images,
    }


def test_score_checks_the_pixel_range(digits):
    ref = digits["test_images"]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics.score(ref * 1.5, ref)
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        metrics.score((ref[:100] + 1) / 2, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = metrics.score(digits["train_images"][:300], ref, kid_subsets=5)
    assert set(result) >= {"fd", "kid", "kid_std", "precision", "recall", "density", "coverage"}
    assert result["n_samples"] == 300 and result["n_reference"] == 359


def test_shipped_classifiers_are_package_data():
    import importlib.resources

    folder = importlib.resources.files("diffusionkit.metrics") / "weights"
    for dataset in metrics.SHIPPED_CLASSIFIERS:
        json_path, weights_path = metrics.classifier_files(dataset)
        assert (folder / json_path.name).is_file() and (folder / weights_path.name).is_file()
    model = metrics.shipped_classifier("digits")
    assert model is metrics.shipped_classifier("digits")  # loaded once
    assert metrics.classifier_for(torch.zeros(1, 1, 28, 28)).config.dataset == "fashion-mnist"
    with pytest.raises(ValueError, match="no classifier is shipped for 'cifar10'"):
        metrics.shipped_classifier("cifar10")


def test_shipped_digits_classifier_classifies_the_held_out_digits(digits):
    model = metrics.load_classifier("digits")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    accuracy = metrics.classifier_accuracy(model, digits["test_images"], digits["test_labels"])
    assert accuracy > 0.9
    predicted = metrics.predict_labels(model, digits["test_images"], batch_size=100)
    assert predicted.shape == (359,) and predicted.dtype == torch.int64
    assert accuracy == float((predicted == digits["test_labels"]).double().mean())
    with pytest.raises(ValueError, match="one label per image"):
        metrics.classifier_accuracy(model, digits["test_images"], digits["test_labels"][:5])


@pytest.mark.parametrize("size", [8, 13, 16])
@pytest.mark.parametrize("channels", [1, 3])
def test_crop_to_classifier_undoes_the_built_in_padding_exactly(digits, size, channels):
    from diffusionkit.data import load_dataset

    padded = load_dataset("digits", image_size=size, channels=channels, train=False).images
    config = metrics.shipped_classifier("digits").config
    assert torch.equal(metrics.crop_to_classifier(padded, config), digits["test_images"])


def test_crop_to_classifier_refuses_what_it_cannot_convert():
    config = metrics.shipped_classifier("digits").config
    with pytest.raises(ValueError, match="smaller than the 8x8"):
        metrics.crop_to_classifier(torch.zeros(2, 1, 6, 6), config)
    with pytest.raises(ValueError, match="2 channels"):
        metrics.crop_to_classifier(torch.zeros(2, 2, 8, 8), config)
    colour = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(metrics.crop_to_classifier(colour, config), colour.mean(1, True))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"widths": [32, 0]}, "each of widths"),
        ({"widths": 32}, "widths must be a list"),
        ({"image_size": True}, "image_size must be an integer"),
        ({"feature_dim": -1}, "feature_dim must be an integer"),
        ({"dataset": ""}, "dataset must be a name"),
        ({"kernel": 3}, "unknown classifier config fields"),
    ],
)
def test_classifier_config_is_checked_field_by_field(change, message):
    good = {"dataset": "digits", "image_size": 8, "widths": [32, 64]}
    assert metrics.ClassifierConfig.from_dict(good).widths == (32, 64)
    with pytest.raises(ValueError, match=message):
        metrics.ClassifierConfig.from_dict({**good, **change})
    with pytest.raises(ValueError, match="lacks the fields"):
        metrics.ClassifierConfig.from_dict({"dataset": "digits"})


def test_loading_refuses_a_malformed_json_record(tmp_path):
    stem = _copy_asset(tmp_path)
    json_path = stem.with_suffix(".json")
    record = json.loads(json_path.read_text())

    def refused(text: str, message: str) -> None:
        json_path.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            metrics.load_classifier(stem)
        assert str(json_path) in str(info.value) or str(stem) in str(info.value)

    refused("{not json", "not valid JSON")
    refused("[1, 2]", "expected a JSON object")
    refused(json.dumps({**record, "format_version": 2}), "format_version 2")
    refused(json.dumps({**record, "config": {**record["config"], "widths": [0]}}), "widths")
    refused(json.dumps({k: v for k, v in record.items() if k != "weights_sha256"}), "checksum")
    json_path.unlink()
    with pytest.raises(FileNotFoundError, match="not found"):
        metrics.load_classifier(stem)


def test_loading_refuses_non_finite_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    stem = _copy_asset(tmp_path)
    weights = stem.with_suffix(".safetensors")
    state = load_file(str(weights))
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, str(weights))
    record = json.loads(stem.with_suffix(".json").read_text())
    record["weights_sha256"] = sha256_file(weights)
    stem.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.load_classifier(stem)


def test_save_then_load_is_exact(tmp_path):
    model = metrics.SmallCNN(metrics.ClassifierConfig(dataset="toy", image_size=8, widths=(4,)))
    metrics.init_weights(model, torch.Generator().manual_seed(0))
    json_path, weights_path = metrics.save_classifier(model, tmp_path / "toy", {"note": "test"})
    record = json.loads(json_path.read_text())
    assert record["note"] == "test" and record["weights_sha256"] == sha256_file(weights_path)
    loaded = metrics.load_classifier(tmp_path / "toy")
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(loaded(x), model.eval()(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.json", "toy.safetensors"]
