"""Sample-quality scoring for the benchmarks, offline (no Inception weights).

The metrics and the shipped feature classifiers are :mod:`diffusionkit.metrics` (re-exported
here for the benchmarks); this package adds the benchmarks' own fixed splits (``digits.py``,
``fashion.py``, ``splits.py``), the calibration scores (``calibrate.py``) and the script that
trains the classifiers (``train_classifier.py``).

Usage::

    from benchmarks.quality import digits_split, score

    split = digits_split()
    result = score(samples.clamp(-1, 1), split.test_images)  # samples: [N x 1 x 8 x 8] in [-1, 1]
    result["fd"], result["kid"], result["precision"], result["recall"]
"""

from benchmarks.quality.calibrate import calibration, fitted_gaussian_samples
from benchmarks.quality.digits import ImageSplit, digits_split
from benchmarks.quality.splits import dataset_split
from diffusionkit.metrics import (
    KID,
    ClassifierConfig,
    ManifoldMetrics,
    SmallCNN,
    SqrtMethod,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
    load_classifier,
    manifold_metrics,
    precision_recall,
    score,
    score_features,
)

__all__ = [
    "KID",
    "ClassifierConfig",
    "ImageSplit",
    "ManifoldMetrics",
    "SmallCNN",
    "SqrtMethod",
    "calibration",
    "dataset_split",
    "digits_split",
    "extract_features",
    "feature_statistics",
    "fitted_gaussian_samples",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kernel_inception_distance",
    "load_classifier",
    "manifold_metrics",
    "precision_recall",
    "score",
    "score_features",
]
