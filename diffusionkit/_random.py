"""Gaussian noise from a caller-supplied ``torch.Generator`` (never the global RNG)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["Generators", "check_generators", "rand", "randn"]

#: One generator for the whole batch, one per sample, or ``None`` (torch's default generator).
Generators = torch.Generator | Sequence[torch.Generator] | None


def check_generators(generator: object) -> Generators:
    """Check that ``generator`` is ``None``, a ``torch.Generator`` or a sequence of them.

    Raises:
        TypeError: anything else (a seed, a list of seeds, a numpy generator); the message
            says what was given and how to make a generator.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    advice = "make one with torch.Generator().manual_seed(seed)"
    if isinstance(generator, Sequence) and not isinstance(generator, str | bytes):
        for i, g in enumerate(generator):
            if not isinstance(g, torch.Generator):
                raise TypeError(
                    f"generator[{i}] is {g!r} ({type(g).__name__}), not a torch.Generator; "
                    f"pass one generator per sample, e.g. [torch.Generator().manual_seed(s) "
                    f"for s in seeds]"
                )
        return generator
    raise TypeError(
        f"generator must be a torch.Generator, a list of them (one per sample) or None, got "
        f"{generator!r} ({type(generator).__name__}); {advice}"
    )


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
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(
    shape: Sequence[int],
    generator: Generators = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``U[0, 1)`` values of ``shape`` ``(B, ...)``, from ``generator`` as :func:`randn`."""
    return _draw(torch.rand, shape, generator, device, dtype)


def _draw(
    fn: Callable[..., Tensor],
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> Tensor:
    shape = tuple(shape)
    generator = check_generators(generator)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = fn(shape, generator=generator, device=gen_device, dtype=dtype)
        return out.to(device) if device is not None else out
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(
            f"got {len(generators)} generators for a batch of {shape[0]}: pass one per sample"
        )
    samples = [fn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generators]
    out = torch.stack(samples)
    return out.to(device) if device is not None else out
