"""diffusers ``UNet2DModel`` <-> diffusionkit :class:`~diffusionkit.UNet`: config and tensor names.

diffusionkit's UNet is the DDPM U-Net layer for layer, so a ``UNet2DModel`` built from
``DownBlock2D``/``AttnDownBlock2D`` and ``UpBlock2D``/``AttnUpBlock2D`` blocks maps onto it
exactly: same layers, same order, same arithmetic. Anything else a ``UNet2DModel`` config can
say (other block types, another activation, Fourier time embeddings, scale-shift norms, input
centering, a scaled mid block, class embeddings...) has no exact counterpart and raises
:class:`~diffusionkit.hub.errors.CheckpointError` naming the field; nothing is approximated.

``out_channels`` is taken as given: ``2 * in_channels`` is a network that learns its variance
(the prediction, then the variance value), which a pipeline's scheduler must then call
``learned_range`` (checked in :mod:`~diffusionkit.hub.diffusers_pipeline`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from diffusionkit.hub.errors import CheckpointError
from diffusionkit.limits import LimitError, check_image_channels, check_levels, check_width
from diffusionkit.networks.unet import UNet

__all__ = [
    "UNET2D_DEFAULTS",
    "diffusers_tensor_names",
    "diffusers_unet_config",
    "from_diffusers_tensors",
    "to_diffusers_tensors",
    "unet_config_from_diffusers",
]

#: ``UNet2DModel.__init__`` defaults (diffusers 0.42), for fields an older config.json omits
UNET2D_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

#: fields that must hold one of these values (the DDPM U-Net's), with why others cannot map
_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "center_input_sample": ((False,), "diffusionkit's UNet does not rescale its input"),
    "time_embedding_type": (("positional",), "only sinusoidal time embeddings are implemented"),
    "mid_block_type": (("UNetMidBlock2D",), "diffusionkit's UNet always has a middle block"),
    "mid_block_scale_factor": ((1, 1.0), "the middle block is not rescaled"),
    "downsample_type": (("conv",), "downsampling is a strided convolution"),
    "upsample_type": (("conv",), "upsampling is nearest-neighbour then a convolution"),
    "act_fn": (("silu", "swish"), "the activation is SiLU"),
    "resnet_time_scale_shift": (("default",), "the time embedding is added, not scale-shift"),
    "class_embed_type": ((None,), "class-conditional UNet2DModels are not supported"),
    "num_class_embeds": ((None,), "class-conditional UNet2DModels are not supported"),
    "downsample_padding": ((0, 1), "downsample padding is 0 (DDPM) or 1"),
}
_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}
_DIFFUSERS_VERSION = "0.30.0"  # written into exported configs: the oldest diffusers tested


def _positive_int(value: Any, name: str, label: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{label}: {name} must be a positive int, got {value!r}")
    return value


def unet_config_from_diffusers(config: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The :class:`~diffusionkit.UNet` arguments equivalent to a ``UNet2DModel`` config.

    Args:
        config: parsed ``unet/config.json``; missing fields take diffusers' defaults.
        label: the file, for error messages.

    Raises:
        CheckpointError: the config uses something diffusionkit's UNet cannot represent exactly.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{label}: expected a JSON object")
    class_name = config.get("_class_name", "UNet2DModel")
    if class_name != "UNet2DModel":
        raise CheckpointError(f"{label}: a {class_name}, not a UNet2DModel")
    fields = {k: v for k, v in config.items() if not k.startswith("_")}
    unknown = sorted(set(fields) - set(UNET2D_DEFAULTS))
    if unknown:
        raise CheckpointError(
            f"{label}: unknown UNet2DModel field(s) {', '.join(unknown)}: cannot tell whether "
            "diffusionkit's UNet represents them"
        )
    cfg = {**UNET2D_DEFAULTS, **fields}
    for key, (allowed, why) in _FIXED.items():
        if cfg[key] not in allowed or isinstance(cfg[key], bool) != isinstance(allowed[0], bool):
            raise CheckpointError(
                f"{label}: {key}={cfg[key]!r} is not supported ({why}); supported: "
                f"{', '.join(repr(a) for a in allowed)}"
            )
    channels = cfg["block_out_channels"]
    down, up = cfg["down_block_types"], cfg["up_block_types"]
    if not isinstance(channels, list) or not channels:
        raise CheckpointError(f"{label}: block_out_channels must be a non-empty list")
    channels = [_positive_int(c, "every block_out_channels entry", label) for c in channels]
    try:  # sizes that would allocate without bound, before anything is built
        check_levels(len(channels), f"{label} (block_out_channels)")
        for c in channels:
            check_width(c, f"{label} (block_out_channels)")
        for key in ("in_channels", "out_channels"):
            check_image_channels(cfg[key], f"{label} ({key})")
    except LimitError as err:
        raise CheckpointError(str(err)) from None
    if (
        not isinstance(down, list)
        or not isinstance(up, list)
        or not len(down) == len(up) == len(channels)
    ):
        raise CheckpointError(
            f"{label}: down_block_types, up_block_types and block_out_channels must be lists of "
            "one entry per level"
        )
    for kind, table in ((down, _DOWN), (up, _UP)):
        bad = [t for t in kind if t not in table]
        if bad:
            raise CheckpointError(
                f"{label}: block type(s) {', '.join(map(str, bad))} are not supported; supported: "
                f"{', '.join([*_DOWN, *_UP])}"
            )
    attns = [_DOWN[t] for t in down]
    if [_UP[t] for t in reversed(up)] != attns:
        raise CheckpointError(
            f"{label}: up_block_types {up} must mirror down_block_types {down} (attention at the "
            "same levels on the way up as on the way down)"
        )
    dim = channels[0]
    if any(c % dim for c in channels):
        raise CheckpointError(
            f"{label}: block_out_channels {channels} must all be multiples of the first"
        )
    groups = _positive_int(cfg["norm_num_groups"], "norm_num_groups", label)
    if cfg["attn_norm_num_groups"] not in (None, groups):
        raise CheckpointError(
            f"{label}: attn_norm_num_groups={cfg['attn_norm_num_groups']} differs from "
            f"norm_num_groups={groups}; diffusionkit's UNet uses one group count"
        )
    head_dim = cfg["attention_head_dim"]
    if head_dim is not None:
        head_dim = _positive_int(head_dim, "attention_head_dim", label)
        with_attention = [c for c, a in zip(channels, attns, strict=True) if a]
        if cfg["add_attention"]:
            with_attention.append(channels[-1])
        uneven = sorted({c for c in with_attention if c % head_dim})
        if uneven:
            raise CheckpointError(
                f"{label}: attention_head_dim={head_dim} does not divide the attention "
                f"channels {uneven}"
            )
    time_dim = cfg["time_embedding_dim"]
    return {
        "in_channels": _positive_int(cfg["in_channels"], "in_channels", label),
        "out_channels": _positive_int(cfg["out_channels"], "out_channels", label),
        "dim": dim,
        "dim_mults": [c // dim for c in channels],
        "attns": attns,
        "n_blocks": _positive_int(cfg["layers_per_block"], "layers_per_block", label),
        "groups": groups,
        "mid_attn": bool(cfg["add_attention"]),
        "dropout": float(cfg["dropout"]),
        "heads": 1,
        "head_dim": head_dim,
        "norm_eps": float(cfg["norm_eps"]),
        "time_emb_dim": 4 * dim
        if time_dim is None
        else _positive_int(time_dim, "time_embedding_dim", label),
        "time_freq_shift": float(cfg["freq_shift"]),
        "time_flip_sin_to_cos": bool(cfg["flip_sin_to_cos"]),
        "downsample_padding": cfg["downsample_padding"],
        "num_classes": None,
        "cond_channels": 0,
    }


def _attention_head_dim(net: UNet) -> int | None:
    """diffusers' ``attention_head_dim`` for ``net``'s attention layers (None: one head each)."""
    widths = set()
    single = True
    channels = [net.dim * m for m in net.dim_mults]
    used = [c for c, a in zip(channels, net.attns, strict=True) if a]
    if net.mid_attn:
        used.append(channels[-1])
    for ch in used:
        heads = ch // net.head_dim if net.head_dim else net.heads
        single = single and heads == 1
        widths.add(ch // heads)
    if single:
        return None
    if len(widths) != 1:
        raise ValueError(
            f"cannot export to diffusers: attention heads of width {sorted(widths)} differ "
            "between levels, while UNet2DModel has one attention_head_dim"
        )
    return widths.pop()


def diffusers_unet_config(net: UNet, sample_size: int | tuple[int, int]) -> dict[str, Any]:
    """The ``UNet2DModel`` config (every field explicit) of a diffusionkit UNet.

    Args:
        net: the network to export.
        sample_size: the training resolution, which diffusers' pipelines sample at.

    Raises:
        ValueError: ``net`` uses a feature ``UNet2DModel`` does not have.
    """
    if type(net) is not UNet:
        raise ValueError(f"only diffusionkit's UNet exports to diffusers, got {type(net).__name__}")
    if net.num_classes is not None or net.cond_channels:
        raise ValueError(
            "cannot export to diffusers: class or image conditioning has no DDPMPipeline "
            "counterpart"
        )
    if net.dim_mults[0] != 1:
        raise ValueError(
            f"cannot export to diffusers: dim_mults must start with 1 (UNet2DModel's first level "
            f"has conv_in's width), got {net.dim_mults}"
        )
    blocks = net.n_blocks
    if not isinstance(blocks, int):
        if len(set(blocks)) != 1:
            raise ValueError(f"cannot export to diffusers: n_blocks {blocks} differ between levels")
        blocks = blocks[0]
    if isinstance(sample_size, bool) or not (
        isinstance(sample_size, int)
        or (isinstance(sample_size, (tuple, list)) and len(sample_size) == 2)
    ):
        raise ValueError(f"sample_size must be an int or (height, width), got {sample_size!r}")
    shift = net.time_freq_shift
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": _DIFFUSERS_VERSION,
        "sample_size": sample_size if isinstance(sample_size, int) else list(sample_size),
        "in_channels": net.in_channels,
        "out_channels": net.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": net.time_emb_dim,
        "freq_shift": int(shift) if float(shift).is_integer() else shift,
        "flip_sin_to_cos": net.time_flip_sin_to_cos,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in net.attns],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(net.attns)],
        "block_out_channels": [net.dim * m for m in net.dim_mults],
        "layers_per_block": blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": net.downsample_padding,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": net.dropout,
        "act_fn": "silu",
        "attention_head_dim": _attention_head_dim(net),
        "norm_num_groups": net.groups,
        "attn_norm_num_groups": None,
        "norm_eps": net.norm_eps,
        "resnet_time_scale_shift": "default",
        "add_attention": net.mid_attn,
        "class_embed_type": None,
        "num_class_embeds": None,
        "num_train_timesteps": None,
    }


# ----------------------------------------------------------------------------- tensor names

_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "conv_shortcut",
}
_ATTENTION = {
    "norm": "group_norm",
    "to_q": "to_q",
    "to_k": "to_k",
    "to_v": "to_v",
    "to_out": "to_out.0",
}
#: diffusers' pre-0.14 attention names -> current ones (projections were then 1x1 convs or linears)
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_TIME = {"linear_1": "linear_1", "linear_2": "linear_2"}

#: (diffusionkit module, diffusers module, child names ours -> diffusers or None for a leaf)
_MODULES: list[tuple[str, str, dict[str, str] | None]] = [
    ("time_embed", "time_embedding", _TIME),
    ("conv_in", "conv_in", None),
    ("downs.{i}.blocks.{j}", "down_blocks.{i}.resnets.{j}", _RESNET),
    ("downs.{i}.attns.{j}", "down_blocks.{i}.attentions.{j}", _ATTENTION),
    ("downs.{i}.resample.conv", "down_blocks.{i}.downsamplers.0.conv", None),
    ("mid_block1", "mid_block.resnets.0", _RESNET),
    ("mid_attn_layer", "mid_block.attentions.0", _ATTENTION),
    ("mid_block2", "mid_block.resnets.1", _RESNET),
    ("ups.{i}.blocks.{j}", "up_blocks.{i}.resnets.{j}", _RESNET),
    ("ups.{i}.attns.{j}", "up_blocks.{i}.attentions.{j}", _ATTENTION),
    ("ups.{i}.resample.conv", "up_blocks.{i}.upsamplers.0.conv", None),
    ("norm_out", "conv_norm_out", None),
    ("conv_out", "conv_out", None),
]


def _pattern(template: str) -> re.Pattern[str]:
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{j\}", r"(?P<j>\d+)")
    return re.compile(rf"{body}\.(?P<rest>.+)")


def _rules(to_diffusers: bool) -> list[tuple[re.Pattern[str], str, dict[str, str] | None]]:
    rules = []
    for ours, theirs, children in _MODULES:
        if to_diffusers:
            rules.append((_pattern(ours), theirs, children))
        else:
            inverse = None if children is None else {v: k for k, v in children.items()}
            rules.append((_pattern(theirs), ours, inverse))
    return rules


_TO_DIFFUSERS = _rules(True)
_FROM_DIFFUSERS = _rules(False)


def _rename(name: str, to_diffusers: bool) -> str | None:
    """The other library's name of tensor ``name`` (``None`` if no rule covers it)."""
    for pattern, template, children in _TO_DIFFUSERS if to_diffusers else _FROM_DIFFUSERS:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        groups = match.groupdict()
        prefix = template.format(i=groups.get("i"), j=groups.get("j"))
        rest = groups["rest"]
        if children is None:
            return f"{prefix}.{rest}" if rest in ("weight", "bias") else None
        for child, mapped in children.items():
            param = rest.removeprefix(f"{child}.")
            if param != rest and param in ("weight", "bias"):
                return f"{prefix}.{mapped}.{param}"
        return None
    return None


def diffusers_tensor_names(names: list[str]) -> dict[str, str]:
    """diffusionkit tensor name -> ``UNet2DModel`` tensor name, for every name."""
    mapping = {}
    for name in names:
        theirs = _rename(name, to_diffusers=True)
        if theirs is None:  # pragma: no cover - every UNet tensor has a rule
            raise ValueError(f"no diffusers name for UNet tensor {name}")
        mapping[name] = theirs
    return mapping


def to_diffusers_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A diffusionkit UNet state dict under ``UNet2DModel``'s (current) tensor names."""
    names = diffusers_tensor_names(list(tensors))
    return {names[k]: v for k, v in tensors.items()}


def _modernize(tensors: Mapping[str, Tensor], label: str) -> dict[str, Tensor]:
    """Rename legacy attention tensors (``query``/``key``/``value``/``proj_attn``) to current names."""
    out: dict[str, Tensor] = {}
    for name, tensor in tensors.items():
        module, _, param = name.rpartition(".")
        parent, _, leaf = module.rpartition(".")
        if leaf in _LEGACY_ATTENTION and ".attentions." in f".{parent}.":
            name = f"{parent}.{_LEGACY_ATTENTION[leaf]}.{param}"
            if param == "weight" and tensor.ndim == 4 and tensor.shape[2:] == (1, 1):
                tensor = tensor[:, :, 0, 0]  # a 1x1 convolution is this linear map
        if name in out:
            raise CheckpointError(f"{label}: holds both the legacy and the current name of {name}")
        out[name] = tensor
    return out


def from_diffusers_tensors(
    tensors: Mapping[str, Tensor], expected: Mapping[str, Tensor], label: str
) -> dict[str, Tensor]:
    """``UNet2DModel`` tensors renamed for a diffusionkit UNet, checked against ``expected``.

    Args:
        tensors: the ``unet/diffusion_pytorch_model.safetensors`` content (current or legacy
            attention names).
        expected: the target UNet's ``state_dict()``.
        label: the file, for error messages.

    Raises:
        CheckpointError: naming (in diffusers' names) missing, unexpected or mis-shaped tensors.
    """
    from diffusionkit.hub.weights import check_tensors

    found = _modernize(tensors, label)
    theirs = diffusers_tensor_names(list(expected))
    check_tensors(found, {theirs[k]: v for k, v in expected.items()}, label, "UNet2DModel config")
    return {ours: found[name] for ours, name in theirs.items()}
