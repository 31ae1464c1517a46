"""The DDPM U-Net (Ho et al. 2020, Appendix B), configurable.

With ``UNet(dim=128, dim_mults=(1, 2, 2, 2), attns=(False, True, False, False))`` it is the
paper's CIFAR-10 network, layer for layer the ``UNet2DModel`` of diffusers' published
``google/ddpm-cifar10-32`` checkpoint (35,746,307 parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionkit.denoiser import Denoiser
from diffusionkit.networks.layers import Attention, Downsample, ResBlock, TimeEmbedding, Upsample
from diffusionkit.persistence import PretrainedMixin

__all__ = ["UNet"]


def _per_level(value: int | Sequence[int], levels: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (int(value),) * levels
    values = tuple(int(v) for v in value)
    if len(values) != levels:
        raise ValueError(f"{name} needs one value per level ({levels}), got {values}")
    return values


#: narrowest first level whose convolutions are stored channels_last (see ``UNet.__init__``)
_CHANNELS_LAST_MIN_DIM = 32


def _to_channels_last(module: nn.Module) -> None:
    # torch's typed overloads of Module.to omit memory_format, which it accepts
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _channels_last_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    _to_channels_last(module)


class _Level(nn.Module):
    """One resolution of the U-Net: residual blocks, optional attention after each, resampling."""

    def __init__(
        self, blocks: list[ResBlock], attn: list[nn.Module], resample: nn.Module | None
    ) -> None:
        super().__init__()
        self.blocks = cast(list[ResBlock], nn.ModuleList(blocks))
        self.attns = cast(list[nn.Module], nn.ModuleList(attn))
        self.resample = resample


class UNet(Denoiser, PretrainedMixin):
    """DDPM U-Net predicting a tensor shaped like its input.

    Args:
        in_channels: image channels ``C``.
        out_channels: output channels; defaults to ``in_channels``.
        dim: channels of the first level; level ``i`` has ``dim * dim_mults[i]``.
        dim_mults: channel multiplier of each level; a model has ``len(dim_mults)`` levels and
            downsamples ``len(dim_mults) - 1`` times.
        attns: one bool per level: self-attention after each residual block of that level.
        n_blocks: residual blocks per level on the way down (an int or one per level); the way
            up has one more per level, as in the paper.
        groups: GroupNorm groups (must divide every level's channels).
        mid_attn: self-attention between the two middle residual blocks.
        dropout: dropout probability inside the residual blocks.
        heads: attention heads (ignored when ``head_dim`` is given).
        head_dim: channels per attention head; heads = channels // head_dim at each level.
        norm_eps: GroupNorm epsilon.
        time_emb_dim: width of the time embedding MLP; defaults to ``4 * dim``.
        time_freq_shift: frequency shift of the sinusoidal embedding (1 in DDPM).
        time_flip_sin_to_cos: embed as ``[cos, sin]`` instead of ``[sin, cos]``.
        downsample_padding: 0 pads right/bottom before a stride-2 conv (DDPM), 1 pads both
            sides.
        num_classes: if set, a learned class embedding is added to the time embedding; label
            ``-1`` selects an extra learned "null" label (for classifier-free guidance).
        cond_channels: channels of a conditioning image concatenated to the input (0: none).

    Shapes: ``forward(x (B, C, H, W), t (B,) int64) -> (B, out_channels, H, W)``, with ``H``
    and ``W`` divisible by ``2 ** (len(dim_mults) - 1)``.

    Memory layout: with ``dim >= 32`` the convolution weights are stored channels_last (faster
    on CPUs; see docs/performance.md), so their state-dict tensors are not contiguous: save with
    diffusionkit's ``save_pretrained`` (or call ``.contiguous()`` before ``safetensors``'
    ``save_file``). The output is always a plain contiguous NCHW tensor.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 2, 2),
        attns: Sequence[bool] = (False, True, False, False),
        n_blocks: int | Sequence[int] = 2,
        groups: int = 32,
        mid_attn: bool = True,
        dropout: float = 0.0,
        heads: int = 1,
        head_dim: int | None = None,
        norm_eps: float = 1e-6,
        time_emb_dim: int | None = None,
        time_freq_shift: float = 1.0,
        time_flip_sin_to_cos: bool = False,
        downsample_padding: int = 0,
        num_classes: int | None = None,
        cond_channels: int = 0,
    ) -> None:
        super().__init__()
        dim_mults = tuple(int(m) for m in dim_mults)
        levels = len(dim_mults)
        if levels < 1 or any(m < 1 for m in dim_mults):
            raise ValueError(
                f"dim_mults must be a non-empty sequence of ints >= 1, got {dim_mults}"
            )
        attns = tuple(bool(a) for a in attns)
        if len(attns) != levels:
            raise ValueError(f"attns needs one bool per level ({levels}), got {attns}")
        blocks_per_level = _per_level(n_blocks, levels, "n_blocks")
        if any(n < 1 for n in blocks_per_level):
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        for name, value in (("in_channels", in_channels), ("dim", dim), ("heads", heads)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        channels = [dim * m for m in dim_mults]
        for ch in {dim, *channels}:
            if ch % groups:
                raise ValueError(f"groups={groups} must divide every level's channels {channels}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")

        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.dim = dim
        self.dim_mults = dim_mults
        self.attns = attns
        self.n_blocks = blocks_per_level if not isinstance(n_blocks, int) else n_blocks
        self.groups = groups
        self.mid_attn = mid_attn
        self.dropout = dropout
        self.heads = heads
        self.head_dim = head_dim
        self.norm_eps = norm_eps
        self.time_emb_dim = time_emb_dim or 4 * dim
        self.time_freq_shift = time_freq_shift
        self.time_flip_sin_to_cos = time_flip_sin_to_cos
        self.downsample_padding = downsample_padding
        self.num_classes = num_classes
        self.cond_channels = cond_channels

        temb = self.time_emb_dim
        self.time_embed = TimeEmbedding(
            dim, temb, freq_shift=time_freq_shift, flip_sin_to_cos=time_flip_sin_to_cos
        )
        # index num_classes is the learned null label used when a label is dropped (-1)
        self.class_embed = nn.Embedding(num_classes + 1, temb) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels + cond_channels, dim, 3, padding=1)

        def res_block(in_ch: int, out_ch: int, temb_dim: int) -> ResBlock:
            return ResBlock(in_ch, out_ch, temb_dim, groups=groups, eps=norm_eps, dropout=dropout)

        def attention(ch: int, use: bool) -> nn.Module:
            n_heads = ch // head_dim if head_dim else heads
            return (
                Attention(ch, heads=n_heads, groups=groups, eps=norm_eps) if use else nn.Identity()
            )

        skips = [dim]
        self.downs = nn.ModuleList()
        ch = dim
        for i, (out, n, use_attn) in enumerate(zip(channels, blocks_per_level, attns, strict=True)):
            blocks, level_attns = [], []
            for _ in range(n):
                blocks.append(res_block(ch, out, temb))
                level_attns.append(attention(out, use_attn))
                ch = out
                skips.append(ch)
            last = i == levels - 1
            down = None if last else Downsample(ch, padding=downsample_padding)
            if not last:
                skips.append(ch)
            self.downs.append(_Level(blocks, level_attns, down))

        self.mid_block1 = res_block(ch, ch, temb)
        self.mid_attn_layer = attention(ch, mid_attn)
        self.mid_block2 = res_block(ch, ch, temb)

        self.ups = nn.ModuleList()
        for i in reversed(range(levels)):
            out, use_attn = channels[i], attns[i]
            blocks, level_attns = [], []
            for _ in range(blocks_per_level[i] + 1):
                blocks.append(res_block(ch + skips.pop(), out, temb))
                level_attns.append(attention(out, use_attn))
                ch = out
            self.ups.append(_Level(blocks, level_attns, Upsample(ch) if i > 0 else None))
        assert not skips, "every skip connection must be consumed"

        self.norm_out = nn.GroupNorm(groups, ch, eps=norm_eps)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        # From 32 channels up, convolution weights are stored channels_last (NHWC) and every
        # activation follows: CPU convolutions (oneDNN) then run without reordering inputs and
        # outputs, 10-25% faster inference; at 16 channels NHWC is no faster, sometimes slower
        # (measurements in docs/performance.md). Same values and state-dict keys; savers copy to
        # contiguous. Loading (also with ``assign=True``) restores the layout, so a reloaded net
        # computes bit for bit what the saved one did.
        if dim >= _CHANNELS_LAST_MIN_DIM:
            _to_channels_last(self)
            self.register_load_state_dict_post_hook(_channels_last_after_load)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, such that ``UNet(**unet.config())`` builds the same net."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "dim": self.dim,
            "dim_mults": list(self.dim_mults),
            "attns": list(self.attns),
            "n_blocks": self.n_blocks if isinstance(self.n_blocks, int) else list(self.n_blocks),
            "groups": self.groups,
            "mid_attn": self.mid_attn,
            "dropout": self.dropout,
            "heads": self.heads,
            "head_dim": self.head_dim,
            "norm_eps": self.norm_eps,
            "time_emb_dim": self.time_emb_dim,
            "time_freq_shift": self.time_freq_shift,
            "time_flip_sin_to_cos": self.time_flip_sin_to_cos,
            "downsample_padding": self.downsample_padding,
            "num_classes": self.num_classes,
            "cond_channels": self.cond_channels,
        }

    @property
    def size_multiple(self) -> int:
        """``H`` and ``W`` must be multiples of this: ``2 ** (levels - 1)``."""
        return 2 ** (len(self.dim_mults) - 1)

    def check_input_shape(self, shape: Sequence[int]) -> None:
        """Raise ``ValueError`` unless ``shape`` is ``(B, in_channels, H, W)`` with valid H, W."""
        super().check_input_shape(shape)
        m = self.size_multiple
        height, width = shape[2], shape[3]
        if height < 1 or width < 1 or height % m or width % m:
            raise ValueError(
                f"UNet with {len(self.dim_mults)} levels needs H and W divisible by {m} "
                f"(e.g. {m}, {2 * m}, {4 * m}, ...); got {height}x{width}"
            )

    def forward(
        self, x: Tensor, t: Tensor, labels: Tensor | None = None, cond: Tensor | None = None
    ) -> Tensor:
        """Predict from ``x`` ``(B, C, H, W)`` at 0-based timesteps ``t`` ``(B,)``.

        Args:
            x: noisy images ``(B, in_channels, H, W)``.
            t: timesteps ``(B,)`` int64.
            labels: class labels ``(B,)`` int64 in ``[0, num_classes)``, ``-1`` for "none";
                ``None`` means none for the whole batch. Only with ``num_classes``.
            cond: conditioning images ``(B, cond_channels, H, W)``; ``None`` means zeros.
                Only with ``cond_channels``.

        Returns:
            ``(B, out_channels, H, W)``.
        """
        emb = self.time_embed(t)  # (B, temb)
        if self.class_embed is not None:
            null = torch.full_like(t, self.num_classes or 0)
            labels = null if labels is None else torch.where(labels < 0, null, labels)
            emb = emb + self.class_embed(labels).to(emb.dtype)
        elif labels is not None:
            raise ValueError("labels given to a UNet built without num_classes")
        if self.cond_channels:
            if cond is None:
                cond = x.new_zeros(x.shape[0], self.cond_channels, *x.shape[2:])
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("cond given to a UNet built without cond_channels")

        h = self.conv_in(x)
        hs = [h]
        for level in cast(list[_Level], self.downs):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(h, emb))
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)
        h = self.mid_block2(self.mid_attn_layer(self.mid_block1(h, emb)), emb)
        for level in cast(list[_Level], self.ups):
            for block, attn in zip(level.blocks, level.attns, strict=True):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            if level.resample is not None:
                h = level.resample(h)
        # the output in the usual NCHW order: the sampler's arithmetic on it stays contiguous
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()
