"""The forward process in closed form: ``q(x_t | x_0)`` (Ho et al. 2020, eq. 4).

The one place where images are noised: training (:meth:`DenoiseDiffusion.forward_sample`),
image-to-image's starting point and inpainting's known region all call :func:`q_sample`.
"""

from __future__ import annotations

from torch import Tensor

from diffusionkit._random import Generators, randn

__all__ = ["q_sample", "q_sample_at"]


def q_sample(x0: Tensor, a: Tensor | float, b: Tensor | float, noise: Tensor) -> Tensor:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020, eq. 4).

    Args:
        x0: clean images ``(B, C, H, W)``.
        a: ``sqrt(abar_t)``: a Python float, or per-sample ``(B, 1, 1, 1)``.
        b: ``sqrt(1 - abar_t)``, likewise.
        noise: ``eps`` ``(B, C, H, W)``.
    """
    return a * x0 + b * noise


def q_sample_at(
    x0: Tensor, alpha_cumprod: float, generator: Generators, noise: Tensor | None = None
) -> Tensor:
    """Draw from ``q(x_t | x_0)`` for one ``abar_t`` (a Python float) shared by the batch.

    Args:
        x0: clean images ``(B, C, H, W)``.
        alpha_cumprod: ``abar_t``.
        generator: source of the noise (one generator or one per sample) when ``noise`` is
            not given.
        noise: ``eps`` ``(B, C, H, W)`` to use instead of a fresh draw.
    """
    if noise is None:
        noise = randn(x0.shape, generator, device=x0.device, dtype=x0.dtype)
    return q_sample(x0, alpha_cumprod**0.5, (1.0 - alpha_cumprod) ** 0.5, noise)
