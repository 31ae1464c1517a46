"""Gaussian noise from a caller-supplied ``torch.Generator`` (never the global RNG)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Generators", "randn"]

#: One generator for the whole batch, one per sample, or ``None`` (torch's default generator).
Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``N(0, I)`` noise of ``shape`` ``(B, ...)``.

    Args:
        shape: output shape; its first entry is the batch size ``B``.
        generator: a single ``torch.Generator``; or a list of ``B`` generators, one per sample,
            so that sample ``i`` depends only on ``generator[i]`` (not on ``B`` or position);
            or ``None`` for torch's default generator.
        device: device of the result. Noise is drawn on each generator's own device and then
            moved, so a CPU generator gives the same numbers whatever the target device.
        dtype: dtype of the result.
    """
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
        return out.to(device) if device is not None else out
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of {shape[0]}: pass one per sample"
        )
    samples = [
        torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generators
    ]
    out = torch.stack(samples)
    return out.to(device) if device is not None else out
