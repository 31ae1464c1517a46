"""Sample-quality metrics on feature arrays, and image-level scoring with the shipped classifiers.

Array metrics take features ``[N x D]`` (numpy or torch; computed in float64):

- :func:`frechet_distance`: the Frechet distance between Gaussians fitted to two feature sets
  (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ...", the "FID" formula).
- :func:`kernel_inception_distance`: unbiased MMD^2 with the cubic polynomial kernel, averaged
  over random subsets (Binkowski et al. 2018, "Demystifying MMD GANs", the "KID").
- :func:`precision_recall`: k-NN manifold precision and recall (Kynkäänniemi et al. 2019,
  "Improved Precision and Recall Metric for Assessing Generative Models"), and with
  :func:`manifold_metrics` also density and coverage (Naeem et al. 2020), which outliers in the
  real set do not inflate.

:func:`score` applies all of them to images in [-1, 1] through the small CNN of
``features.py``; :func:`calibration` gives the reference values a reader needs to interpret them.
The names say "Frechet distance" and "KID" rather than "FID": the feature space is not Inception's,
so numbers are comparable only within this project.
"""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_features(x: ArrayLike, name: str = "features") -> np.ndarray:
    """``[N x D]`` float64 numpy copy of a numpy array or torch tensor."""
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N x D], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contain NaN or inf")
    return a


# --------------------------------------------------------------------------- Frechet distance


class SqrtMethod(enum.Enum):
    """How :func:`frechet_distance_from_stats` computes ``Tr((S1 S2)^{1/2})``."""

    EIGH = "eigh"  # symmetric eigendecompositions; no scipy needed (default)
    SCIPY_SQRTM = "sqrtm"  # scipy.linalg.sqrtm(S1 @ S2), as in the reference FID code


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D x D]`` of ``features`` ``[N x D]`` (N >= 2)."""
    f = _as_features(features)
    if f.shape[0] < 2:
        raise ValueError("need at least 2 samples for a covariance")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # S1 S2 is similar to the symmetric PSD matrix A = S1^{1/2} S2 S1^{1/2}
    # (S1^{-1/2} (S1 S2) S1^{1/2} = A when S1 is invertible, and by continuity otherwise), so
    # Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A)). Symmetric eigensolvers are backward stable and
    # return real eigenvalues; the tiny negative ones from rounding are clipped to zero.
    w1, v1 = np.linalg.eigh(sigma1)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T  # S1^{1/2}
    a = root1 @ sigma2 @ root1
    a = 0.5 * (a + a.T)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(a), 0.0, None)).sum())


def _trace_sqrt_product_scipy(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        # Singular product: regularise both covariances slightly (as the reference FID code does).
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Rounding gives S1 S2 tiny complex eigenvalue pairs; a large imaginary part is a real
        # failure (e.g. a covariance that is not PSD) and must not be silently dropped.
        scale = max(1.0, float(np.abs(covmean.real).max()))
        imag = float(np.abs(covmean.imag).max())
        if imag > 1e-3 * scale:
            raise ValueError(
                f"matrix square root has imaginary part {imag:.3g} (scale {scale:.3g})"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance_from_stats(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    method: SqrtMethod = SqrtMethod.EIGH,
    eps: float = 1e-6,
) -> float:
    """Frechet (2-Wasserstein squared) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (Dowson & Landau 1982; used as FID by
    Heusel et al. 2017, eq. 6).

    Args:
        mu1, mu2: means ``[D]``.
        sigma1, sigma2: covariances ``[D x D]`` (symmetric positive semi-definite).
        method: how to compute the trace of the matrix square root (see :class:`SqrtMethod`).
        eps: diagonal offset for :attr:`SqrtMethod.SCIPY_SQRTM` if the product is singular.

    Returns:
        The distance, clipped at 0 (negative values can only be rounding). Its absolute accuracy
        is about ``sqrt(machine eps) * Tr(S)`` when a covariance is singular (square roots of
        rounding-level eigenvalues), far better when both are well conditioned.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, "
            f"sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    if method is SqrtMethod.EIGH:
        tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
    elif method is SqrtMethod.SCIPY_SQRTM:
        tr_covmean = _trace_sqrt_product_scipy(sigma1, sigma2, eps)
    else:
        raise TypeError(f"method must be a SqrtMethod, got {method!r}")
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def frechet_distance(
    features1: ArrayLike, features2: ArrayLike, method: SqrtMethod = SqrtMethod.EIGH
) -> float:
    """Frechet distance between Gaussians fitted to ``features1`` ``[N1 x D]`` and ``[N2 x D]``.

    The estimate is biased upwards at finite N (Binkowski et al. 2018, app. D): compare values only
    at equal sample sizes.
    """
    mu1, s1 = feature_statistics(features1)
    mu2, s2 = feature_statistics(features2)
    return frechet_distance_from_stats(mu1, s1, mu2, s2, method=method)


# --------------------------------------------------------------------------- KID


@dataclass(frozen=True)
class KID:
    """Kernel distance estimate: mean and standard deviation over subsets."""

    mean: float
    std: float
    subset_size: int
    num_subsets: int


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``k(x, y) = (x . y / D + 1)^3`` for ``x`` ``[N x D]``, ``y`` ``[M x D]`` -> ``[N x M]``.

    The kernel of Binkowski et al. 2018, sec. 5.
    """
    k = x @ y.T / x.shape[1] + 1.0
    return k * k * k  # about 3x faster than k ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3) with :func:`polynomial_kernel`.

    Args:
        x: ``[m x D]``; y: ``[n x D]``; both m, n >= 2.
    """
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))  # off-diagonal mean
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kernel_inception_distance(
    features1: ArrayLike,
    features2: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> KID:
    """KID of Binkowski et al. 2018: unbiased MMD^2 averaged over random subsets.

    Each subset draws ``subset_size`` rows from each set without replacement (``subset_size`` is
    reduced to the smaller set's size if needed). Unlike the Frechet distance the estimate is
    unbiased, so it may be slightly negative when the distributions agree.

    Args:
        features1: ``[N1 x D]``; features2: ``[N2 x D]``.
        num_subsets: number of subset pairs.
        subset_size: rows per subset.
        seed: seeds a private ``numpy.random.Generator`` for the subset draws.
    """
    f1, f2 = _as_features(features1, "features1"), _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dims differ: {f1.shape[1]} vs {f2.shape[1]}")
    size = min(subset_size, f1.shape[0], f2.shape[0])
    if size < 2:
        raise ValueError("need at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            mmd2_unbiased(
                f1[rng.choice(f1.shape[0], size, replace=False)],
                f2[rng.choice(f2.shape[0], size, replace=False)],
            )
            for _ in range(num_subsets)
        ]
    )
    return KID(float(values.mean()), float(values.std()), size, num_subsets)


# --------------------------------------------------------------------------- precision / recall


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor, batch_size: int):
    """Yield ``(start, [B x M] distances)`` for row batches of ``a`` ``[N x D]`` vs ``b``."""
    for i in range(0, a.shape[0], batch_size):
        yield i, torch.cdist(a[i : i + batch_size], b)


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1000) -> torch.Tensor:
    """Distance from each row of ``features`` ``[N x D]`` to its k-th nearest *other* row -> ``[N]``."""
    if features.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples, got {features.shape[0]}")
    radii = torch.empty(features.shape[0], dtype=features.dtype)
    for i, dist in _pairwise_distances(features, features, batch_size):
        # The k+1-th smallest distance skips the point itself (distance 0).
        radii[i : i + dist.shape[0]] = dist.kthvalue(k + 1, dim=1).values
    return radii


def _ball_membership(
    queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which balls ``B(support_j, radii_j)`` hold which queries.

    Returns:
        ``[Q]`` number of balls holding each query, and ``[S]`` bool: ball ``j`` holds any query.
    """
    counts = torch.empty(queries.shape[0], dtype=torch.int64)
    hit = torch.zeros(support.shape[0], dtype=torch.bool)
    for i, dist in _pairwise_distances(queries, support, batch_size):
        inside = dist <= radii[None, :]  # (B, S)
        counts[i : i + dist.shape[0]] = inside.sum(dim=1)
        hit |= inside.any(dim=0)
    return counts, hit


@dataclass(frozen=True)
class ManifoldMetrics:
    """k-NN manifold metrics of a fake set against a real set (all in [0, 1] except density)."""

    precision: float  # Kynkäänniemi et al. 2019: fakes inside the real manifold
    recall: float  # Kynkäänniemi et al. 2019: reals inside the fake manifold
    density: float  # Naeem et al. 2020: mean number of real balls per fake, / k (about 1 if equal)
    coverage: float  # Naeem et al. 2020: real balls that hold at least one fake


def manifold_metrics(
    real_features: ArrayLike, fake_features: ArrayLike, k: int = 3, batch_size: int = 1000
) -> ManifoldMetrics:
    """Improved precision / recall (Kynkäänniemi et al. 2019, sec. 2, eq. 1-2) and density /
    coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics", eq. 4-5).

    Each set's manifold is the union of balls around its points whose radius is the distance to
    the point's k-th nearest neighbour in the same set. Precision is the fraction of fakes inside
    the real manifold (fidelity), recall the fraction of reals inside the fake manifold (diversity).
    A few outlying real points have large balls that can make precision high even for poor samples
    (on Fashion-MNIST, uniform noise reaches precision 0.99); density and coverage use only the
    real balls and are robust to that.

    Args:
        real_features: ``[N x D]``; fake_features: ``[M x D]``.
        k: neighbourhood size (Kynkäänniemi et al. use 3; Naeem et al. recommend 5).
        batch_size: rows per distance block (memory is ``batch_size x max(N, M)`` float64).
    """
    real = torch.from_numpy(_as_features(real_features, "real_features"))
    fake = torch.from_numpy(_as_features(fake_features, "fake_features"))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    fake_in_real, real_ball_hit = _ball_membership(
        fake, real, knn_radii(real, k, batch_size), batch_size
    )
    real_in_fake, _ = _ball_membership(real, fake, knn_radii(fake, k, batch_size), batch_size)
    return ManifoldMetrics(
        precision=float((fake_in_real > 0).double().mean()),
        recall=float((real_in_fake > 0).double().mean()),
        density=float(fake_in_real.double().sum() / (k * fake.shape[0])),
        coverage=float(real_ball_hit.double().mean()),
    )


def precision_recall(
    real_features: ArrayLike, fake_features: ArrayLike, k: int = 3, batch_size: int = 1000
) -> tuple[float, float]:
    """``(precision, recall)`` of Kynkäänniemi et al. 2019; see :func:`manifold_metrics`."""
    m = manifold_metrics(real_features, fake_features, k, batch_size)
    return m.precision, m.recall


# --------------------------------------------------------------------------- image-level scoring


def _check_images(images: torch.Tensor, name: str) -> None:
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contain NaN or inf")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(
            f"{name} must lie in [-1, 1], found [{lo:.3g}, {hi:.3g}]; clamp samples first"
        )
    if lo >= 0.0:
        warnings.warn(
            f"{name} are all >= 0: images in [0, 1] must be mapped to [-1, 1] (x * 2 - 1)",
            stacklevel=3,
        )


def score_features(
    sample_features: ArrayLike,
    reference_features: ArrayLike,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """All metrics for features ``[M x D]`` (samples) against ``[N x D]`` (reference).

    Returns:
        ``{"fd", "kid", "kid_std", "precision", "recall", "density", "coverage",
        "n_samples", "n_reference"}``.
    """
    kid = kernel_inception_distance(
        sample_features, reference_features, kid_subsets, kid_subset_size, seed
    )
    manifold = manifold_metrics(reference_features, sample_features, k=k)
    return {
        "fd": frechet_distance(sample_features, reference_features),
        "kid": kid.mean,
        "kid_std": kid.std,
        "precision": manifold.precision,
        "recall": manifold.recall,
        "density": manifold.density,
        "coverage": manifold.coverage,
        "n_samples": float(len(sample_features)),
        "n_reference": float(len(reference_features)),
    }


def score(
    samples: torch.Tensor,
    reference: torch.Tensor,
    *,
    classifier: Any = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Score generated images against real ones in the feature space of a shipped classifier.

    Args:
        samples: ``[M x 1 x H x W]`` generated images in [-1, 1].
        reference: ``[N x 1 x H x W]`` real held-out images in [-1, 1] (e.g.
            ``digits_split().test_images``).
        classifier: a :class:`~benchmarks.quality.features.SmallCNN`; by default the shipped
            classifier matching the image size (8 -> digits, 28 -> fashion-mnist).
        kid_subsets, kid_subset_size: see :func:`kernel_inception_distance`.
        k: neighbourhood size for :func:`precision_recall`.
        seed: seeds KID's subset draws.

    Returns:
        ``{"fd", "kid", "kid_std", "precision", "recall", "density", "coverage",
        "n_samples", "n_reference"}``.
        Frechet distances are biased by sample size: compare runs at equal M and N.
    """
    from benchmarks.quality.features import classifier_for, extract_features

    _check_images(samples, "samples")
    _check_images(reference, "reference")
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"image shapes differ: {tuple(samples.shape)} vs {tuple(reference.shape)}")
    model = classifier if classifier is not None else classifier_for(reference)
    return score_features(
        extract_features(model, samples),
        extract_features(model, reference),
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        k=k,
        seed=seed,
    )


def fitted_gaussian_samples(
    images: torch.Tensor, n: int, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``n`` images from a Gaussian with the pixel mean and full covariance of ``images``.

    Args:
        images: ``[N x C x H x W]`` training images.
        n: number of samples.
        generator: source of randomness.

    Returns:
        ``[n x C x H x W]`` float32, clamped to [-1, 1] as DDPM samplers clamp their output.
    """
    flat = images.flatten(1).double()  # (N, C*H*W)
    mean = flat.mean(0)
    cov = torch.cov(flat.T)
    evals, evecs = torch.linalg.eigh(cov)
    factor = evecs * evals.clamp(min=0).sqrt()  # cov = factor @ factor.T
    z = torch.randn(n, flat.shape[1], generator=generator, dtype=torch.float64)
    x = mean + z @ factor.T
    return x.clamp(-1.0, 1.0).float().reshape(n, *images.shape[1:])


def calibration(
    dataset: str = "digits",
    n_samples: int = 1000,
    seed: int = 0,
    classifier: Any = None,
    kid_subsets: int = 100,
) -> dict[str, dict[str, float]]:
    """Reference scores that say what good and bad values look like.

    Every candidate has ``n_samples`` images and is scored against the full held-out split:

    - ``"train real"``: real training images (a random subset): the best a model can do.
    - ``"fitted gaussian"``: a Gaussian with the training pixels' mean and full covariance.
    - ``"uniform noise"``: pixels uniform in [-1, 1].

    Args:
        dataset: "digits" or "fashion-mnist".
        n_samples: images per candidate (at most the training-set size).
        seed: seeds a ``torch.Generator`` for subsets / samples and KID's subset draws.
        classifier: defaults to the shipped classifier for ``dataset``.
        kid_subsets: subsets for :func:`kernel_inception_distance`.

    Returns:
        ``{candidate: score dict}`` as returned by :func:`score`.
    """
    from benchmarks.quality.features import dataset_split, extract_features, load_classifier

    split = dataset_split(dataset)
    model = classifier if classifier is not None else load_classifier(dataset)
    if n_samples > split.train_images.shape[0]:
        raise ValueError(f"n_samples {n_samples} exceeds the training set")
    g = torch.Generator().manual_seed(seed)
    subset = torch.randperm(split.train_images.shape[0], generator=g)[:n_samples]
    candidates = {
        "train real": split.train_images[subset],
        "fitted gaussian": fitted_gaussian_samples(split.train_images, n_samples, g),
        "uniform noise": torch.rand(n_samples, *split.train_images.shape[1:], generator=g) * 2 - 1,
    }
    _check_images(split.test_images, "reference")
    reference = extract_features(model, split.test_images)
    results = {}
    for name, images in candidates.items():
        _check_images(images, name)
        results[name] = score_features(
            extract_features(model, images), reference, kid_subsets=kid_subsets, seed=seed
        )
    return results
