"""Sample-quality scoring for the benchmarks, offline (no Inception weights).

Features come from small CNN classifiers trained on the benchmark datasets
(``features.py``, weights in ``benchmarks/assets``); metrics are the Frechet distance
(Heusel et al. 2017), KID (Binkowski et al. 2018) and improved precision / recall
(Kynkäänniemi et al. 2019) in that feature space (``metrics.py``).

Usage::

    from benchmarks.quality import digits_split, score

    split = digits_split()
    result = score(samples.clamp(-1, 1), split.test_images)  # samples: [N x 1 x 8 x 8] in [-1, 1]
    result["fd"], result["kid"], result["precision"], result["recall"]
"""

from benchmarks.quality.digits import ImageSplit, digits_split
from benchmarks.quality.features import (
    ClassifierConfig,
    SmallCNN,
    dataset_split,
    extract_features,
    load_classifier,
)
from benchmarks.quality.metrics import (
    KID,
    ManifoldMetrics,
    SqrtMethod,
    calibration,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
    kernel_inception_distance,
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
    "frechet_distance",
    "frechet_distance_from_stats",
    "kernel_inception_distance",
    "load_classifier",
    "manifold_metrics",
    "precision_recall",
    "score",
    "score_features",
]
