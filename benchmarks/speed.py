"""Benchmark 1: network speed of the DDPM CIFAR-10 U-Net with the same weights in both libraries.

diffusers' ``UNet2DModel`` is built in the configuration of ``google/ddpm-cifar10-32`` with
seeded random weights, saved with ``save_pretrained`` and loaded into diffusionkit through its
diffusers loader (``UNet.from_diffusers``), so both libraries run the very same weights; the
outputs are compared before anything is timed. Timed: forward latency at batch 1 and 16 under
``torch.inference_mode``, and one training step (forward, MSE loss, backward, AdamW step) at
batch 16. Achieved GFLOP/s count the FLOPs of each call with ``torch.utils.flop_counter`` and
are compared with the machine's fp32 conv and matmul peaks measured in the same run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Context, Timing, measure_peaks, n_params, time_alternating

NAME = "speed"

#: ``google/ddpm-cifar10-32``'s ``unet/config.json`` (Ho et al. 2020, Appendix B)
DDPM_CIFAR10_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "act_fn": "silu",
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "downsample_padding": 0,
    "center_input_sample": False,
    "mid_block_scale_factor": 1,
}


def diffusers_unet(config: dict[str, Any], seed: int) -> nn.Module:
    """A diffusers ``UNet2DModel`` with ``config`` and weights from ``torch.manual_seed(seed)``."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)  # diffusers initializes from the global RNG only
    return UNet2DModel(**config)


def load_into_diffusionkit(unet_folder: Path) -> nn.Module:
    """Load a saved ``UNet2DModel`` folder with diffusionkit's diffusers loader."""
    from diffusionkit import UNet

    loader = getattr(UNet, "from_diffusers", None)
    if loader is None:
        raise RuntimeError(
            "this checkout has no diffusers loader (UNet.from_diffusers): benchmark 1 needs it "
            "to run both libraries on the same weights"
        )
    return loader(unet_folder)


def same_weights_pair(config: dict[str, Any], seed: int, device: torch.device):
    """``(diffusers_net, diffusionkit_net, max_abs_output_difference)`` with identical weights."""
    theirs = diffusers_unet(config, seed).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "unet"
        theirs.save_pretrained(folder, safe_serialization=True)
        ours = load_into_diffusionkit(folder).to(device)
    if n_params(ours) != n_params(theirs):
        raise RuntimeError(f"parameter counts differ: {n_params(ours)} vs {n_params(theirs)}")
    g = torch.Generator().manual_seed(seed)
    size = config["sample_size"]
    x = torch.randn(2, config["in_channels"], size, size, generator=g).to(device)
    t = torch.tensor([3, 900], device=device)
    with torch.inference_mode():
        diff = (theirs(x, t).sample - ours(x, t)).abs().max().item()
    return theirs, ours, diff


def count_flops(fn) -> int:
    """FLOPs (2 x multiply-adds) of one call of ``fn``, as counted by ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _train_step(net: nn.Module, opt: torch.optim.Optimizer, x, t, target, diffusers: bool):
    opt.zero_grad(set_to_none=True)
    out = net(x, t)
    out = out.sample if diffusers else out
    F.mse_loss(out, target).backward()
    opt.step()


def run(ctx: Context) -> dict[str, Any]:
    """Run benchmark 1 and return its results (JSON-serializable)."""
    device = ctx.device
    repeats = 3 if ctx.quick else 10
    ctx.log("speed: measuring the machine's fp32 peaks")
    peaks = measure_peaks(device)
    ctx.log(
        f"  matmul peak {peaks['matmul_peak_gflops']:.0f} GFLOP/s, "
        f"conv3x3 peak {peaks['conv_peak_gflops']:.0f} GFLOP/s"
    )
    theirs, ours, diff = same_weights_pair(DDPM_CIFAR10_UNET, seed=0, device=device)
    ctx.log(f"  same weights: {n_params(ours):,} parameters, max |output diff| {diff:.2e}")
    size, ch = DDPM_CIFAR10_UNET["sample_size"], DDPM_CIFAR10_UNET["in_channels"]
    cases: list[dict[str, Any]] = []

    theirs.eval()
    ours.eval()
    for batch in (1, 16):
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, ch, size, size, generator=g).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)
        with torch.inference_mode():
            fns = {
                "diffusers": lambda x=x, t=t: theirs(x, t).sample,
                "diffusionkit": lambda x=x, t=t: ours(x, t),
            }
            flops = count_flops(fns["diffusionkit"])
            timings = time_alternating(fns, repeats=repeats, warmup=1, device=device)
        cases.append(_case(f"forward b{batch}", batch, timings, flops, peaks))
        ctx.log("  " + _summary(cases[-1]))

    batch = 16
    g = torch.Generator().manual_seed(99)
    x = torch.randn(batch, ch, size, size, generator=g).to(device)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    target = torch.randn(batch, ch, size, size, generator=g).to(device)
    theirs.train()
    ours.train()
    opts = {
        name: torch.optim.AdamW(net.parameters(), lr=1e-4)
        for name, net in (("diffusers", theirs), ("diffusionkit", ours))
    }
    fns = {
        "diffusers": lambda: _train_step(theirs, opts["diffusers"], x, t, target, True),
        "diffusionkit": lambda: _train_step(ours, opts["diffusionkit"], x, t, target, False),
    }
    flops = count_flops(fns["diffusionkit"])
    timings = time_alternating(fns, repeats=repeats, warmup=1, device=device)
    cases.append(_case(f"train step b{batch}", batch, timings, flops, peaks))
    ctx.log("  " + _summary(cases[-1]))
    return {
        "model": "DDPM CIFAR-10 U-Net (google/ddpm-cifar10-32 config), random weights seed 0",
        "parameters": n_params(ours),
        "max_abs_output_diff": diff,
        "repeats": repeats,
        "peaks": peaks,
        "cases": cases,
    }


def _case(
    name: str, batch: int, timings: dict[str, Timing], flops: int, peaks: dict[str, Any]
) -> dict[str, Any]:
    ours, theirs = timings["diffusionkit"], timings["diffusers"]
    gflops = flops / ours.median / 1e9
    return {
        "case": name,
        "batch": batch,
        "gflop_per_call": flops / 1e9,
        "timings": {k: v.to_dict() for k, v in timings.items()},
        "ratio": ours.median / theirs.median,
        "diffusionkit_gflops": gflops,
        "diffusers_gflops": flops / theirs.median / 1e9,
        "fraction_of_conv_peak": gflops / peaks["conv_peak_gflops"],
    }


def _summary(case: dict[str, Any]) -> str:
    t = case["timings"]
    return (
        f"{case['case']}: diffusers {t['diffusers']['median_s'] * 1e3:.1f} ms, diffusionkit "
        f"{t['diffusionkit']['median_s'] * 1e3:.1f} ms, ratio {case['ratio']:.3f}, "
        f"{case['diffusionkit_gflops']:.0f} GFLOP/s ({case['fraction_of_conv_peak']:.0%} of conv peak)"
    )
