"""Sample-quality metrics, offline: feature-space distances between generated and real images.

Features come from small CNN classifiers trained on the built-in datasets and shipped with the
package (``"digits"``, ``"fashion-mnist"``); no weights are downloaded. On feature arrays
``[N x D]`` (numpy or torch, computed in float64):

* :func:`frechet_distance`: Frechet distance of fitted Gaussians (Heusel et al. 2017's FID
  formula; :mod:`~diffusionkit.metrics.frechet`);
* :func:`kernel_inception_distance`: KID, unbiased MMD^2 with a cubic kernel (Binkowski et
  al. 2018; :mod:`~diffusionkit.metrics.kid`);
* :func:`precision_recall` and :func:`manifold_metrics`: improved precision and recall
  (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020;
  :mod:`~diffusionkit.metrics.manifold`);

on images ``[N x C x H x W]`` in [-1, 1]:

* :func:`score`: all of the above in a classifier's feature space
  (:mod:`~diffusionkit.metrics.score`);
* :func:`classifier_accuracy`: how often samples drawn for given classes are classified as
  those classes (:mod:`~diffusionkit.metrics.accuracy`);
* :func:`crop_to_classifier`: a model's images (padded, 3-channel) as a classifier takes them;
* :func:`~diffusionkit.metrics.fid.frechet_inception_distance`: FID with Inception-v3 through
  torchmetrics, for RGB data (``pip install "diffusionkit[fid]"``; not imported here).

Example:
    >>> import torch
    >>> from diffusionkit.data import load_dataset
    >>> from diffusionkit.metrics import score
    >>> real = load_dataset("digits", image_size=8, train=False).images  # (359, 1, 8, 8)
    >>> noise = torch.rand(359, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> result = score(noise, real, kid_subsets=10)
    >>> result["fd"] > 10 * score(real[:180], real[180:], kid_subsets=10)["fd"]
    True
"""

from diffusionkit.metrics.accuracy import classifier_accuracy, predict_labels
from diffusionkit.metrics.classifier import (
    ClassifierConfig,
    SmallCNN,
    crop_to_classifier,
    extract_features,
    init_weights,
)
from diffusionkit.metrics.frechet import (
    SqrtMethod,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_stats,
)
from diffusionkit.metrics.kid import KID, kernel_inception_distance, mmd2_unbiased
from diffusionkit.metrics.manifold import (
    ManifoldMetrics,
    knn_radii,
    manifold_metrics,
    precision_recall,
)
from diffusionkit.metrics.score import check_images, score, score_features
from diffusionkit.metrics.shipped import (
    SHIPPED_CLASSIFIERS,
    classifier_files,
    classifier_for,
    load_classifier,
    save_classifier,
    shipped_classifier,
)

__all__ = [
    "KID",
    "SHIPPED_CLASSIFIERS",
    "ClassifierConfig",
    "ManifoldMetrics",
    "SmallCNN",
    "SqrtMethod",
    "check_images",
    "classifier_accuracy",
    "classifier_files",
    "classifier_for",
    "crop_to_classifier",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_stats",
    "init_weights",
    "kernel_inception_distance",
    "knn_radii",
    "load_classifier",
    "manifold_metrics",
    "mmd2_unbiased",
    "precision_recall",
    "predict_labels",
    "save_classifier",
    "score",
    "score_features",
    "shipped_classifier",
]
