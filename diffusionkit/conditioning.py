"""Conditioning inputs of a denoising network: validation, dropping, and the null condition.

A conditional network takes class ``labels`` ``(B,)`` int64 (``-1`` = "no label", which
:class:`~diffusionkit.UNet` maps to a learned null embedding) and/or conditioning images
``cond`` ``(B, C_cond, H, W)`` (all zeros = "no image"). Classifier-free guidance (Ho &
Salimans 2022) trains one network for both cases by dropping the condition of a random subset
of samples (:func:`drop_condition`) and at sampling time contrasts the two
(:mod:`diffusionkit.guidance`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffusionkit._random import Generators

__all__ = [
    "NULL_LABEL",
    "check_cond",
    "check_labels",
    "drop_condition",
    "drop_mask",
    "null_condition",
]

#: the label meaning "no label" (classifier-free guidance's unconditional input)
NULL_LABEL = -1

_MISSING = object()


def check_labels(
    labels: Tensor | int | Sequence[int] | None, batch: int, net: nn.Module, device: torch.device
) -> Tensor | None:
    """Validate class labels and return them as ``(B,)`` int64 on ``device``.

    Args:
        labels: ``(B,)`` integer labels, a sequence of ``B`` ints, or one int for the whole
            batch; ``-1`` means "no label". ``None`` passes through.
        batch: the batch size ``B``.
        net: the network; if it has a ``num_classes`` attribute, labels must lie in
            ``[0, num_classes)`` (or be ``-1``), and ``num_classes=None`` rejects labels.
        device: where the network runs.
    """
    if labels is None:
        return None
    num_classes = getattr(net, "num_classes", _MISSING)
    if num_classes is None or num_classes == 0:
        raise ValueError(
            f"labels given, but the network ({type(net).__name__}) was built without classes: "
            "build it with num_classes=N for class-conditional models"
        )
    if isinstance(labels, bool):
        raise TypeError("labels must be integers, got a bool")
    if isinstance(labels, int):
        labels = torch.full((batch,), labels, dtype=torch.int64)
    elif not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must hold integer class indices (int64), got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(
            f"labels must be shaped ({batch},) to match the batch, got {tuple(labels.shape)}"
        )
    lo, hi = (v.item() for v in torch.aminmax(labels))
    top = num_classes if isinstance(num_classes, int) else None
    if lo < NULL_LABEL or (top is not None and hi >= top):
        valid = f"[0, {top - 1}]" if top is not None else "[0, num_classes)"
        raise ValueError(
            f"labels must lie in {valid}, or be {NULL_LABEL} for 'no label'; got values in "
            f"[{lo}, {hi}]"
        )
    return labels.to(device=device, dtype=torch.int64)


def check_cond(
    cond: Tensor | None,
    shape: Sequence[int],
    net: nn.Module,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor | None:
    """Validate conditioning images and return them on ``device`` in ``dtype``.

    Args:
        cond: ``(B, C_cond, H, W)`` with the batch size and ``H, W`` of the images; ``None``
            passes through.
        shape: ``(B, C, H, W)`` of the images.
        net: the network; if it has a ``cond_channels`` attribute, ``C_cond`` must equal it.
        device: where the network runs.
        dtype: the network's floating dtype.
    """
    if cond is None:
        return None
    if not isinstance(cond, Tensor):
        raise TypeError(f"cond must be a torch.Tensor, got {type(cond).__name__}")
    if not cond.is_floating_point():
        raise TypeError(f"cond must be a floating-point tensor, got {cond.dtype}")
    batch, _, height, width = shape
    if cond.ndim != 4 or cond.shape[0] != batch or tuple(cond.shape[2:]) != (height, width):
        raise ValueError(
            f"cond must be shaped ({batch}, C_cond, {height}, {width}) to match the images "
            f"{tuple(shape)}; got {tuple(cond.shape)}"
        )
    channels = getattr(net, "cond_channels", _MISSING)
    if isinstance(channels, int) and channels != cond.shape[1]:
        if channels == 0:
            raise ValueError(
                f"cond given, but the network ({type(net).__name__}) was built without "
                "cond_channels: build it with cond_channels=C for image-conditional models"
            )
        raise ValueError(
            f"cond must have {channels} channels (the network's cond_channels), got {cond.shape[1]}"
        )
    return cond.to(device=device, dtype=dtype)


def drop_mask(batch: int, prob: float, generator: Generators, device: torch.device) -> Tensor:
    """``(B,)`` bool, each entry ``True`` with probability ``prob``, drawn from ``generator``.

    ``generator`` is one ``torch.Generator``, a list of ``B`` (entry ``i`` from ``generator[i]``)
    or ``None`` (torch's default generator).
    """
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        u = torch.rand(batch, generator=generator, device=gen_device)
    else:
        generators = list(generator)
        if len(generators) != batch:
            raise ValueError(
                f"got {len(generators)} generators for a batch of {batch}: pass one per sample"
            )
        u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators])
    return u.to(device) < prob


def drop_condition(
    labels: Tensor | None, cond: Tensor | None, drop: Tensor
) -> tuple[Tensor | None, Tensor | None]:
    """Replace the condition of the samples where ``drop`` ``(B,)`` is ``True`` by the null one.

    Labels become ``-1`` and conditioning images zeros, jointly per sample, so the network
    learns one unconditional model ``eps(x_t, t, null)`` (Ho & Salimans 2022, Algorithm 1).
    """
    if labels is not None:
        labels = torch.where(drop, torch.full_like(labels, NULL_LABEL), labels)
    if cond is not None:
        cond = cond * (~drop).to(cond.dtype).view(-1, *([1] * (cond.ndim - 1)))
    return labels, cond


def null_condition(
    labels: Tensor | None, cond: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """The unconditional inputs matching ``labels`` and ``cond``: all ``-1`` and all zeros."""
    return (
        None if labels is None else torch.full_like(labels, NULL_LABEL),
        None if cond is None else torch.zeros_like(cond),
    )
