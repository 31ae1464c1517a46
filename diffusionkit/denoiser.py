"""The narrow contract every network must meet to be used by :class:`DenoiseDiffusion`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["Denoiser"]


class Denoiser(nn.Module, ABC):
    """Abstract denoising network: ``forward(x, t) -> Tensor`` shaped like ``x``.

    ``x`` is a batch of noisy images ``(B, C, H, W)`` and ``t`` the 0-based timesteps
    ``(B,)`` int64 (``t = 0`` is the first noising step). The output is the network's
    prediction (noise ``eps``, clean image ``x0`` or velocity ``v``, as the owning
    :class:`~diffusionkit.DenoiseDiffusion` says), with the shape of ``x``.

    Subclass it for your own network; :class:`~diffusionkit.DenoiseDiffusion` also accepts any
    plain ``nn.Module`` with the same call signature. Conditional networks additionally accept
    ``labels`` ``(B,)`` int64 (``-1`` meaning "no label") and ``cond`` ``(B, C_cond, H, W)``.

    Attributes:
        in_channels: channels of ``x`` the network expects, or ``None`` if it does not say.
    """

    in_channels: int | None = None

    @abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict from noisy images ``x`` ``(B, C, H, W)`` at timesteps ``t`` ``(B,)``."""

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` if the network cannot take a batch of this shape.

        The default checks the channel count against :attr:`in_channels` when it is set;
        networks with size constraints (e.g. :class:`~diffusionkit.UNet`) extend it.
        """
        if len(shape) != 4:
            raise ValueError(f"expected images shaped (B, C, H, W), got shape {tuple(shape)}")
        if self.in_channels is not None and shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channels, got "
                f"{shape[1]} (images shaped {tuple(shape)})"
            )
