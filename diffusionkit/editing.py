"""Editing existing images with a trained model: inpainting and image-to-image.

* Inpainting (RePaint, Lugmayr et al. 2022, Sec. 4.1 and Algorithm 1): before every network
  call at timestep ``t`` the known region (``mask = 1``) of ``x_t`` is replaced by the known
  image noised to ``t`` in closed form, ``sqrt(abar_t) x_known + sqrt(1 - abar_t) z``; the
  network then fills the unknown region consistently with it. Resampling (Sec. 4.2) jumps
  back after a step, ``x_t ~ q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)``, and
  repeats the step, so the unknown region has more chances to harmonize with the known one.
* Image-to-image (SDEdit, Meng et al. 2022, Algorithm 1): noise an image to an intermediate
  timestep in closed form and run the reverse chain from there.

Both are driven by :meth:`diffusionkit.DenoiseDiffusion.reverse_sample`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffusionkit._random import Generators, randn
from diffusionkit.forward_process import q_sample_at
from diffusionkit.inputs import check_data_range

__all__ = ["Inpainting", "check_image", "initial_state", "noised"]


def check_image(name: str, x: Tensor, shape: Sequence[int]) -> Tensor:
    """Validate an image batch that must broadcast to ``shape`` ``(B, C, H, W)``.

    ``x`` is ``(B, C, H, W)`` or ``(1, C, H, W)`` (one image for the whole batch), floating,
    finite and in ``[-1, 1]``. Returns ``x`` expanded to ``shape``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    batch, channels, height, width = shape
    if (
        x.ndim != 4
        or x.shape[0] not in (1, batch)
        or tuple(x.shape[1:]) != (channels, height, width)
    ):
        raise ValueError(
            f"{name} must be shaped ({batch} or 1, {channels}, {height}, {width}) to match the "
            f"samples {tuple(shape)}; got {tuple(x.shape)}"
        )
    check_data_range(name, x)
    return x.expand(*shape)


#: draw from ``q(x_t | x_0)`` for one ``abar_t`` (kept under its earlier name)
noised = q_sample_at


def initial_state(
    shape: Sequence[int],
    alpha_cumprod: float,
    generator: Generators,
    *,
    x_init: Tensor | None = None,
    noise: Tensor | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The state a reverse chain starts from, at its first timestep (``abar = alpha_cumprod``).

    Pure noise ``N(0, I)`` (drawn from ``generator``, or ``noise`` as given), or, for
    image-to-image (SDEdit, Meng et al. 2022, Algorithm 1), ``x_init`` noised to that timestep
    in closed form with that noise.

    Args:
        shape: ``(B, C, H, W)``.
        alpha_cumprod: ``abar`` of the chain's first timestep.
        generator: source of the draw when ``noise`` is not given.
        x_init: ``(B, C, H, W)`` images to start from, already checked and on ``device``.
        noise: ``(B, C, H, W)``, the draw to use, already checked and on ``device``.
        device: where the state lives.
        dtype: its dtype.
    """
    if x_init is not None:
        return q_sample_at(x_init, alpha_cumprod, generator, noise)
    if noise is not None:
        return noise.clone()
    return randn(shape, generator, device=device, dtype=dtype)


def _check_mask(mask: Tensor, shape: Sequence[int]) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    batch, channels, height, width = shape
    if (
        mask.ndim != 4
        or mask.shape[0] not in (1, batch)
        or mask.shape[1] not in (1, channels)
        or tuple(mask.shape[2:]) != (height, width)
    ):
        raise ValueError(
            f"mask must be shaped ({batch} or 1, {channels} or 1, {height}, {width}) to match "
            f"the samples {tuple(shape)} (1 = known pixel, 0 = to fill in); got "
            f"{tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_complex():
            raise TypeError(f"mask must be a bool or real tensor of 0s and 1s, got {mask.dtype}")
        if ((mask != 0) & (mask != 1)).any().item():
            raise ValueError(
                "mask must hold only 0 (to fill in) and 1 (known); got other values (a soft "
                "mask is not supported: threshold it, e.g. mask > 0.5)"
            )
    return mask != 0


@dataclass
class Inpainting:
    """The known image and region of an inpainting run, on the sampling device.

    Build it with :meth:`build`, which validates the inputs.

    Attributes:
        x_known: ``(B, C, H, W)`` known image, in ``[-1, 1]``.
        known: ``bool`` mask broadcastable to ``(B, C, H, W)``: ``True`` where the pixel is
            known and kept.
        resample_jumps: how many times each step is repeated after jumping back
            (RePaint's ``U - 1``); ``0`` is plain replacement.
    """

    x_known: Tensor
    known: Tensor
    resample_jumps: int = 0

    @classmethod
    def build(
        cls,
        x_known: Tensor,
        mask: Tensor,
        shape: Sequence[int],
        device: torch.device,
        dtype: torch.dtype,
        resample_jumps: int = 0,
    ) -> Inpainting:
        """Validate and move the inputs.

        Args:
            x_known: ``(B or 1, C, H, W)`` images in ``[-1, 1]``; only pixels under the mask
                are used.
            mask: ``(B or 1, C or 1, H, W)``, ``1`` (or ``True``) = known, ``0`` = to fill in.
            shape: ``(B, C, H, W)`` of the samples.
            device: sampling device.
            dtype: sampling dtype.
            resample_jumps: RePaint resampling repeats per step, an int ``>= 0``.
        """
        if (
            isinstance(resample_jumps, bool)
            or not isinstance(resample_jumps, int)
            or resample_jumps < 0
        ):
            raise ValueError(f"resample_jumps must be an int >= 0, got {resample_jumps!r}")
        known = _check_mask(mask, shape).to(device)
        x = check_image("x_known", x_known, shape).to(device=device, dtype=dtype)
        return cls(x_known=x, known=known, resample_jumps=resample_jumps)

    def replace(self, x_t: Tensor, alpha_cumprod: float, generator: Generators) -> Tensor:
        """``x_t`` with its known region set to ``x_known`` noised to ``abar_t`` (RePaint eq. 8)."""
        return torch.where(self.known, q_sample_at(self.x_known, alpha_cumprod, generator), x_t)

    def finish(self, x: Tensor, alpha_cumprod: float, generator: Generators) -> Tensor:
        """The result: known pixels exactly ``x_known`` (``abar = 1``), or noised to ``abar``."""
        if alpha_cumprod == 1.0:
            return torch.where(self.known, self.x_known, x)
        return self.replace(x, alpha_cumprod, generator)

    @staticmethod
    def jump_back(x_prev: Tensor, alpha: float, beta: float, generator: Generators) -> Tensor:
        """``x_t ~ q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t I)`` (Ho et al. 2020, eq. 2)."""
        noise = randn(x_prev.shape, generator, device=x_prev.device, dtype=x_prev.dtype)
        return alpha**0.5 * x_prev + beta**0.5 * noise
