"""How often a classifier agrees with the labels of images: of real ones (the classifier's own
accuracy) or of samples drawn for given classes (how well a conditional model follows them)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["classifier_accuracy", "predict_labels"]


def predict_labels(
    classifier: nn.Module, images: torch.Tensor, batch_size: int = 1000
) -> torch.Tensor:
    """The classifier's top-1 classes of ``images``, in batches without gradients.

    Args:
        classifier: maps ``[B x C x H x W]`` images to logits ``[B x num_classes]``.
        images: ``[N x C x H x W]`` in [-1, 1] (cast to float32).
        batch_size: images per forward pass.

    Returns:
        ``[N]`` int64 class indices on the CPU.
    """
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.inference_mode():
            out = [
                classifier(images[i : i + batch_size].float()).argmax(1).cpu()
                for i in range(0, images.shape[0], batch_size)
            ]
    finally:
        classifier.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)


def classifier_accuracy(
    classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> float:
    """Fraction of ``images`` that ``classifier`` assigns to their ``labels``.

    For samples of a class-conditional model drawn with ``labels``, this is how often the model
    produced the asked-for class, as far as the classifier can tell (its accuracy on real
    held-out images is the ceiling).

    Args:
        classifier: maps ``[B x C x H x W]`` images to logits ``[B x num_classes]``.
        images: ``[N x C x H x W]`` in [-1, 1], ``N >= 1``.
        labels: ``[N]`` integer classes.
        batch_size: images per forward pass.

    Raises:
        ValueError: ``labels`` is not ``[N]``, or there are no images.
    """
    labels = torch.as_tensor(labels)
    if labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ValueError(
            f"need one label per image: images {tuple(images.shape)}, labels {tuple(labels.shape)}"
        )
    predicted = predict_labels(classifier, images, batch_size)
    return float((predicted == labels.cpu()).double().mean())
