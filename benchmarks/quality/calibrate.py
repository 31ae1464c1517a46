"""Reference scores that say what good and bad values of the metrics look like on a dataset.

The metrics themselves live in :mod:`diffusionkit.metrics`; this module scores the benchmark
split's real training images, a Gaussian fitted to their pixels and uniform noise against the
held-out images, the calibration stored with each shipped classifier (``train_classifier.py``).
"""

from __future__ import annotations

import torch

from diffusionkit.metrics import (
    SmallCNN,
    check_images,
    extract_features,
    load_classifier,
    score_features,
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
    classifier: SmallCNN | None = None,
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
        ``{candidate: score dict}`` as returned by :func:`diffusionkit.metrics.score`.
    """
    from benchmarks.quality.splits import dataset_split

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
    check_images(split.test_images, "reference")
    reference = extract_features(model, split.test_images)
    results = {}
    for name, images in candidates.items():
        check_images(images, name)
        results[name] = score_features(
            extract_features(model, images), reference, kid_subsets=kid_subsets, seed=seed
        )
    return results
