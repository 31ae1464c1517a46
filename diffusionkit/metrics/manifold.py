"""k-NN manifold metrics: improved precision and recall, density and coverage.

Each feature set's manifold is approximated by the union of balls around its points, each of
radius the distance to the point's k-th nearest neighbour in the same set (Kynkäänniemi et al.
2019, "Improved Precision and Recall Metric for Assessing Generative Models", sec. 2). Precision
is the fraction of generated points inside the real manifold (fidelity), recall the fraction of
real points inside the generated manifold (diversity). Density and coverage (Naeem et al. 2020,
"Reliable Fidelity and Diversity Metrics for Generative Models") count only real balls, and so
are not inflated by outliers among the real points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusionkit.metrics._arrays import ArrayLike, as_features

__all__ = ["ManifoldMetrics", "knn_radii", "manifold_metrics", "precision_recall"]


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
        real_features: ``[N x D]``.
        fake_features: ``[M x D]``.
        k: neighbourhood size (Kynkäänniemi et al. use 3; Naeem et al. recommend 5).
        batch_size: rows per distance block (memory is ``batch_size x max(N, M)`` float64).
    """
    real = torch.from_numpy(as_features(real_features, "real_features"))
    fake = torch.from_numpy(as_features(fake_features, "fake_features"))
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
