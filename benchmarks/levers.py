"""The performance levers, measured: which diffusionkit keeps and which it rejects.

Each lever is timed against diffusionkit's default on the same weights and inputs, alternating,
with the methods of ``common.time_alternating``. A ratio below 1 means the lever is faster.

* ``layout``: channels_last (diffusionkit's default from 32 channels up) against NCHW, for the
  CIFAR-10 U-Net (forward b1, b16, training step b16), the ~1M-parameter U-Net of benchmark 2
  and the digits U-Net of benchmark 4.
* ``attention``: ``scaled_dot_product_attention`` (the default) against explicit
  ``softmax(q k^T / sqrt(d)) v``.
* ``out-of-place``: the residual blocks without their in-place additions and SiLUs (the
  default does them in place where autograd allows).
* ``bf16``: ``torch.autocast("cpu", torch.bfloat16)`` of the forward pass against fp32, for
  inference and for training steps (weights, gradients and AdamW stay fp32, as in
  ``Trainer(precision="bf16")``). Whether it helps depends on the CPU's bf16 instructions,
  which the result records.
* ``compile``: ``nn.Module.compile()`` (opt-in; full runs only: compiling takes minutes).
"""

from __future__ import annotations

import contextlib
import copy
import time
import types
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from benchmarks.common import Context, cpu_features, time_alternating
from diffusionkit import UNet
from diffusionkit.networks import layers

NAME = "levers"

CIFAR10 = {
    "in_channels": 3,
    "dim": 128,
    "dim_mults": (1, 2, 2, 2),
    "attns": (False, True, False, False),
}
SMALL = {
    "in_channels": 3,
    "dim": 32,
    "dim_mults": (1, 2, 2),
    "attns": (False, True, False),
    "n_blocks": 1,
    "groups": 8,
}
DIGITS = {"in_channels": 1, "dim": 16, "dim_mults": (1, 2), "attns": (False, True), "groups": 8}


def _explicit_attention(self: layers.Attention, x: Tensor) -> Tensor:
    _, _, height, width = x.shape
    h = rearrange(self.norm(x), "b c x y -> b (x y) c")
    q, k, v = (
        rearrange(proj(h), "b n (heads d) -> b heads n d", heads=self.heads)
        for proj in (self.to_q, self.to_k, self.to_v)
    )
    weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    h = self.to_out(rearrange(weights @ v, "b heads n d -> b n (heads d)"))
    return x + rearrange(h, "b (x y) c -> b c x y", x=height, y=width)


def _out_of_place_resblock(self: layers.ResBlock, x: Tensor, temb: Tensor) -> Tensor:
    # the residual block as it was before the in-place lever was adopted
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.time_proj(F.silu(temb))[:, :, None, None]
    h = self.conv2(self.dropout(F.silu(self.norm2(h))))
    return self.skip(x) + h


def _patched(net: nn.Module, kind: type[nn.Module], forward: Callable[..., Tensor]) -> nn.Module:
    out = copy.deepcopy(net)
    for module in out.modules():
        if isinstance(module, kind):
            module.forward = types.MethodType(forward, module)  # type: ignore[method-assign]
    return out


def _is_channels_last(net: nn.Module) -> bool:
    # a weight with one input channel is contiguous in both layouts: look at a wider one
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
    return not convs[0].weight.is_contiguous()


def _channels_last(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _nchw(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def _compare(
    nets: dict[str, nn.Module],
    batch: int,
    size: int,
    repeats: int,
    train: bool,
    device: torch.device,
    autocast: str | None = None,
) -> dict[str, Any]:
    first = next(iter(nets.values()))
    ch = first.in_channels
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, ch, size, size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    fns: dict[str, Callable[[], Any]] = {}
    for name, net in nets.items():
        net.train(train)
        # the autocast lever casts the forward pass only, as ``Trainer(precision="bf16")`` does
        cast: Callable[[], AbstractContextManager[Any]] = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            if name == autocast
            else contextlib.nullcontext
        )
        if train:
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

            def step(
                net: nn.Module = net, opt: torch.optim.Optimizer = opt, cast: Any = cast
            ) -> None:
                opt.zero_grad(set_to_none=True)
                with cast():
                    out = net(x, t)
                F.mse_loss(out.float(), x).backward()
                opt.step()

            fns[name] = step
        else:

            def forward(net: nn.Module = net, cast: Any = cast) -> None:
                with torch.inference_mode(), cast():
                    net(x, t)

            fns[name] = forward
    timings = time_alternating(fns, repeats=repeats, warmup=1, device=device)
    base = timings["default"].median
    return {
        "batch": batch,
        "train": train,
        "median_ms": {k: v.median * 1e3 for k, v in timings.items()},
        "ratio_to_default": {k: v.median / base for k, v in timings.items()},
    }


def run(ctx: Context) -> dict[str, Any]:
    """Measure every lever; return ratios to diffusionkit's default (JSON-serializable)."""
    device, quick = ctx.device, ctx.quick
    repeats = 3 if quick else 7
    out: dict[str, Any] = {}

    def log(name: str, r: dict[str, Any]) -> None:
        ratios = ", ".join(
            f"{k} {v:.3f}" for k, v in r["ratio_to_default"].items() if k != "default"
        )
        ctx.log(f"  {name}: default {r['median_ms']['default']:.1f} ms; {ratios}")

    torch.manual_seed(0)
    cifar = UNet(**CIFAR10).to(device)
    for batch in (1, 16):
        nets = {
            "default": cifar,
            "nchw": _nchw(cifar),
            "explicit attention": _patched(cifar, layers.Attention, _explicit_attention),
            "out-of-place": _patched(cifar, layers.ResBlock, _out_of_place_resblock),
            "bf16 autocast": cifar,
        }
        key = f"cifar10 forward b{batch}"
        out[key] = _compare(nets, batch, 32, repeats, False, device, autocast="bf16 autocast")
        log(key, out[key])
    key = "cifar10 train step b16"
    out[key] = _compare(
        {
            "default": copy.deepcopy(cifar),
            "nchw": _nchw(cifar),
            "out-of-place": _patched(cifar, layers.ResBlock, _out_of_place_resblock),
            "bf16 autocast": copy.deepcopy(cifar),
        },
        16,
        32,
        max(3, repeats // 2),
        True,
        device,
        autocast="bf16 autocast",
    )
    log(key, out[key])
    del cifar

    for name, config, size, batches, train_batch in (
        ("small", SMALL, 32, (1, 64), 64),
        ("digits", DIGITS, 8, (64, 1000), 64),
    ):
        torch.manual_seed(0)
        net = UNet(**config).to(device)
        if _is_channels_last(net):
            other, alt = "nchw", _nchw(net)
        else:
            other, alt = "channels_last", _channels_last(net)
        for batch in batches:
            key = f"{name} forward b{batch}"
            nets = {"default": net, other: alt}
            out[key] = _compare(nets, batch, size, repeats * 3, False, device)
            log(key, out[key])
        key = f"{name} train step b{train_batch}"
        nets = {
            "default": copy.deepcopy(net),
            other: copy.deepcopy(alt),
            "bf16 autocast": copy.deepcopy(net),
        }
        out[key] = _compare(
            nets, train_batch, size, repeats * 3, True, device, autocast="bf16 autocast"
        )
        log(key, out[key])

    if not quick:
        torch.manual_seed(0)
        net = UNet(**SMALL).to(device)
        compiled = copy.deepcopy(net)
        start = time.perf_counter()
        compiled.compile()
        x, t = (
            torch.randn(1, 3, 32, 32, device=device),
            torch.zeros(1, dtype=torch.long, device=device),
        )
        with torch.inference_mode():
            compiled(x, t)
        compile_s = time.perf_counter() - start
        key = "small forward b1 compile"
        out[key] = _compare(
            {"default": net, "compile": compiled}, 1, 32, repeats * 3, False, device
        )
        out[key]["compile_seconds"] = compile_s
        log(key, out[key])
        ctx.log(f"    (compiling took {compile_s:.0f} s)")
    return {"repeats": repeats, "cpu_features": cpu_features(), "cases": out}
