"""The Frechet distance between Gaussians fitted to two feature sets.

``d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` is the squared 2-Wasserstein distance
between ``N(mu1, S1)`` and ``N(mu2, S2)`` (Dowson & Landau 1982). Heusel et al. 2017 ("GANs
Trained by a Two Time-Scale Update Rule ...", eq. 6) use it on Inception-v3 features as the
"FID"; here it applies to any features ``[N x D]``, numpy or torch, computed in float64.
"""

from __future__ import annotations

import enum

import numpy as np

from diffusionkit.metrics._arrays import ArrayLike, as_features

__all__ = [
    "SqrtMethod",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
]


class SqrtMethod(enum.Enum):
    """How :func:`frechet_distance_from_stats` computes ``Tr((S1 S2)^{1/2})``."""

    EIGH = "eigh"  # symmetric eigendecompositions; no scipy needed (default)
    SCIPY_SQRTM = "sqrtm"  # scipy.linalg.sqrtm(S1 @ S2), as in the reference FID code


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D x D]`` of ``features`` ``[N x D]`` (N >= 2)."""
    f = as_features(features)
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
        mu1: mean ``[D]`` of the first set.
        sigma1: its covariance ``[D x D]`` (symmetric positive semi-definite).
        mu2: mean ``[D]`` of the second set.
        sigma2: its covariance ``[D x D]``.
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
