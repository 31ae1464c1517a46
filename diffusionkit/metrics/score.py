"""All metrics at once: generated images against real ones, in a classifier's feature space.

:func:`score` extracts features with a classifier (by default the shipped one matching the
image size) and applies :func:`score_features`: the Frechet distance
(:mod:`~diffusionkit.metrics.frechet`), KID (:mod:`~diffusionkit.metrics.kid`), and precision,
recall, density and coverage (:mod:`~diffusionkit.metrics.manifold`). The names say "Frechet
distance" and "KID" rather than "FID": the feature space is not Inception's, so the numbers are
comparable only between evaluations that use the same classifier, data and sample sizes.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from diffusionkit.metrics._arrays import ArrayLike
from diffusionkit.metrics.frechet import frechet_distance
from diffusionkit.metrics.kid import kernel_inception_distance
from diffusionkit.metrics.manifold import manifold_metrics

if TYPE_CHECKING:
    from diffusionkit.metrics.classifier import SmallCNN

__all__ = ["check_images", "score", "score_features"]


def check_images(images: torch.Tensor, name: str) -> None:
    """Refuse images outside [-1, 1] or not finite; warn if they look like [0, 1] images.

    Args:
        images: ``[N x C x H x W]``.
        name: what they are, for the message (e.g. ``"samples"``).

    Raises:
        ValueError: a value is NaN, inf, or outside [-1, 1] by more than 1e-3.
    """
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
    classifier: SmallCNN | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Score generated images against real ones in the feature space of a shipped classifier.

    Args:
        samples: ``[M x 1 x H x W]`` generated images in [-1, 1].
        reference: ``[N x 1 x H x W]`` real held-out images in [-1, 1] (e.g.
            the held-out images of ``load_dataset("digits", image_size=8, train=False)``).
        classifier: a :class:`~diffusionkit.metrics.classifier.SmallCNN`; by default the
            shipped classifier matching the image size (8 -> digits, 28 -> fashion-mnist).
        kid_subsets: subsets for :func:`~diffusionkit.metrics.kid.kernel_inception_distance`.
        kid_subset_size: images per subset (at most the smaller set's size).
        k: neighbourhood size for :func:`~diffusionkit.metrics.manifold.manifold_metrics`.
        seed: seeds KID's subset draws.

    Returns:
        ``{"fd", "kid", "kid_std", "precision", "recall", "density", "coverage",
        "n_samples", "n_reference"}``.
        Frechet distances are biased by sample size: compare runs at equal M and N.
    """
    from diffusionkit.metrics.classifier import extract_features
    from diffusionkit.metrics.shipped import classifier_for

    check_images(samples, "samples")
    check_images(reference, "reference")
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
