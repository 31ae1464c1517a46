"""Building blocks of the DDPM U-Net (Ho et al. 2020, Appendix B).

Each block mirrors the layer of the original TensorFlow model (and of diffusers'
``UNet2DModel``, which reproduces it) so that published weights map one to one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "Attention",
    "Downsample",
    "ResBlock",
    "TimeEmbedding",
    "Upsample",
    "sinusoidal_embedding",
]


def sinusoidal_embedding(
    t: Tensor, dim: int, *, freq_shift: float = 1.0, flip_sin_to_cos: bool = False
) -> Tensor:
    """Transformer-style sinusoidal embedding of timesteps (Vaswani et al. 2017, Sec. 3.5).

    Frequencies are ``exp(-log(10000) i / (dim / 2 - freq_shift))`` for ``i < dim / 2``;
    ``freq_shift = 1`` is the DDPM paper's choice.

    Args:
        t: timesteps ``(B,)``, any numeric dtype.
        dim: embedding width (even).
        freq_shift: shift of the frequency denominator.
        flip_sin_to_cos: order ``[cos, sin]`` instead of ``[sin, cos]``.

    Returns:
        ``(B, dim)`` float32 embedding.
    """
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    sin, cos = torch.sin(args), torch.cos(args)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding followed by a two-layer MLP: ``(B,) -> (B, out_dim)``."""

    def __init__(
        self, dim: int, out_dim: int, *, freq_shift: float = 1.0, flip_sin_to_cos: bool = False
    ) -> None:
        super().__init__()
        self.dim = dim
        self.freq_shift = freq_shift
        self.flip_sin_to_cos = flip_sin_to_cos
        self.linear_1 = nn.Linear(dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, t: Tensor) -> Tensor:
        emb = sinusoidal_embedding(
            t, self.dim, freq_shift=self.freq_shift, flip_sin_to_cos=self.flip_sin_to_cos
        )
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class ResBlock(nn.Module):
    """Pre-activation residual block with an additive time embedding.

    ``h = conv2(drop(silu(norm2(conv1(silu(norm1(x))) + proj(silu(temb)))))); out = skip(x) + h``

    Shapes: ``x`` ``(B, in_ch, H, W)``, ``temb`` ``(B, temb_dim)`` -> ``(B, out_ch, H, W)``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        temb_dim: int,
        *,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        # In place where autograd allows: the two additions always (no backward needs their
        # inputs), the SiLUs only without autograd (SiLU's backward needs its input). Same
        # values as out of place; measured in docs/performance.md ("levers").
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h += self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        h += self.skip(x)
        return h


class Attention(nn.Module):
    """Residual multi-head self-attention over the spatial positions of a feature map.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Uses ``scaled_dot_product_attention``.
    """

    def __init__(self, channels: int, *, heads: int = 1, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.shape
        h = rearrange(self.norm(x), "b c x y -> b (x y) c")
        q, k, v = (
            rearrange(proj(h), "b n (heads d) -> b heads n d", heads=self.heads)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        h = self.to_out(rearrange(h, "b heads n d -> b n (heads d)"))
        return x + rearrange(h, "b (x y) c -> b c x y", x=height, y=width)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: ``(B, C, H, W) -> (B, C, H/2, W/2)``.

    ``padding=0`` pads right and bottom by one pixel first (the original DDPM model's
    TensorFlow "SAME" padding); ``padding=1`` pads symmetrically.
    """

    def __init__(self, channels: int, *, padding: int = 0) -> None:
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"downsample padding must be 0 or 1, got {padding}")
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling then a 3x3 conv: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
