"""Benchmark 2: how much a library's sampling loop adds to the time its network takes.

Each library samples with its own public entry point: diffusers' ``DDPMPipeline.__call__``,
lucidrains' ``GaussianDiffusion.sample`` (``p_sample_loop``) and diffusionkit's
``DenoiseDiffusion.reverse_sample``. diffusers and diffusionkit run the same ~1.1M-parameter
U-Net weights (built in diffusers, loaded through diffusionkit's diffusers loader); lucidrains
runs its own ``Unet`` of about the same size. Every chain is the full ancestral chain of a
100-step schedule (the per-step work is the same as with 1,000 steps, at a tenth of the cost).

Method: a forward pre-hook and a forward hook on the network module read ``time.perf_counter``
(after a device synchronize on GPUs) and accumulate the network's own time over exactly the
calls the loop makes, on exactly its inputs. The overhead is ``(total - network) / network``.
The hook dispatch itself (about a microsecond per call) lands on the loop's side, the same for
every library. As a cross-check, the same number of network calls is replayed in a bare loop on
the captured inputs of the first step ("replay" columns).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from benchmarks.common import Context, Timing, n_params, sync
from benchmarks.speed import same_weights_pair

NAME = "sampling_overhead"
STEPS = 100  # diffusion steps T of every schedule; the chains run all of them
QUICK_STEPS = 25  # --quick; the shortest chain a linear schedule scaled by 1000 / T allows

#: a 3-level diffusers U-Net with attention at 16x16: 1,113,955 parameters at 32x32x3
SMALL_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,
    "norm_num_groups": 8,
    "norm_eps": 1e-6,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "downsample_padding": 0,
}
#: lucidrains ``Unet`` arguments of about the same size (1.41M parameters at 3 channels)
LUCIDRAINS_UNET: dict[str, Any] = {"dim": 32, "dim_mults": (1, 2, 2), "channels": 3}


class NetTimer:
    """Accumulate a module's own forward time with a pre-hook and a hook.

    Args:
        module: the network whose calls are timed.
        device: synchronized at both ends of every call when it is a GPU.
        capture: keep the positional arguments of the first call (for the replay cross-check).
    """

    def __init__(self, module: nn.Module, device: torch.device, capture: bool = True) -> None:
        self.device = device
        self.seconds = 0.0
        self.calls = 0
        self.first_args: tuple[Any, ...] | None = None
        self._capture = capture
        self._start = 0.0
        self._handles = [
            module.register_forward_pre_hook(self._pre),
            module.register_forward_hook(self._post),
        ]

    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._capture and self.first_args is None:
            self.first_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        sync(self.device)
        self._start = time.perf_counter()

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _samplers(batch: int, steps: int, device: torch.device):
    """name -> (sample(), network module, network call for the replay) for the three libraries."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from benchmarks.quality.peers import import_lucidrains
    from diffusionkit import DenoiseDiffusion, LinearSchedule

    theirs, ours, diff = same_weights_pair(SMALL_UNET, seed=0, device=device)
    pipe = DDPMPipeline(unet=theirs, scheduler=DDPMScheduler(num_train_timesteps=steps))
    pipe.set_progress_bar_config(disable=True)
    model = DenoiseDiffusion(ours, LinearSchedule(timesteps=steps)).to(device)
    Unet, GaussianDiffusion = import_lucidrains()
    torch.manual_seed(0)
    lucid = GaussianDiffusion(Unet(**LUCIDRAINS_UNET), image_size=32, timesteps=steps).to(device)
    shape = (batch, 3, 32, 32)

    def diffusers_sample() -> Any:
        g = torch.Generator(device).manual_seed(0)
        return pipe(batch_size=batch, generator=g, num_inference_steps=steps, output_type="pt")

    def diffusionkit_sample() -> Any:
        g = torch.Generator(device).manual_seed(0)
        return model.reverse_sample(shape, generator=g, progress=False)

    def lucidrains_sample() -> Any:
        return lucid.sample(batch_size=batch)

    return (
        {
            "diffusers": (diffusers_sample, theirs),
            "diffusionkit": (diffusionkit_sample, ours),
            "lucidrains": (lucidrains_sample, lucid.model),
        },
        diff,
    )


def _replay(net: nn.Module, args: tuple[Any, ...], calls: int, device: torch.device) -> float:
    with torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            net(*args)
        sync(device)
    return time.perf_counter() - start


def measure(batch: int, repeats: int, device: torch.device, steps: int = STEPS) -> dict[str, Any]:
    """Sample ``repeats`` times per library (alternating) at ``batch``; return per-library stats."""
    samplers, diff = _samplers(batch, steps, device)
    timers = {name: NetTimer(net, device) for name, (_, net) in samplers.items()}
    totals = {name: Timing() for name in samplers}
    nets = {name: Timing() for name in samplers}
    names = list(samplers)
    for name in names:  # warm-up
        samplers[name][0]()
    for r in range(repeats):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            timers[name].reset()
            sync(device)
            start = time.perf_counter()
            samplers[name][0]()
            sync(device)
            totals[name].times.append(time.perf_counter() - start)
            nets[name].times.append(timers[name].seconds)
    out: dict[str, Any] = {}
    for name in names:
        timer = timers[name]
        timer.remove()
        net = samplers[name][1]
        if timer.first_args is None or timer.calls != steps:
            raise RuntimeError(f"{name} made {timer.calls} network calls for {steps} steps")
        replay = _replay(net, timer.first_args, timer.calls, device)
        overheads = [
            (tot - n) / n * 100 for tot, n in zip(totals[name].times, nets[name].times, strict=True)
        ]
        out[name] = {
            "parameters": n_params(net),
            "net_calls": timer.calls,
            "total": totals[name].to_dict(),
            "net": nets[name].to_dict(),
            "ms_per_step": totals[name].median / timer.calls * 1e3,
            "overhead_pct": statistics.median(overheads),
            "overhead_pct_min": min(overheads),
            "overhead_pct_max": max(overheads),
            "overhead_ms_per_step": (totals[name].median - nets[name].median) / timer.calls * 1e3,
            "replay_net_s": replay,
            "overhead_pct_vs_replay": (totals[name].median - replay) / replay * 100,
        }
    out["_max_abs_output_diff_diffusers_vs_diffusionkit"] = diff
    return out


def run(ctx: Context) -> dict[str, Any]:
    """Run benchmark 2 at batch 1 and 64 and return its results (JSON-serializable)."""
    repeats = 3 if ctx.quick else 7
    steps = QUICK_STEPS if ctx.quick else STEPS
    cases: dict[str, Any] = {}
    for batch in (1, 64):
        ctx.log(f"sampling overhead: batch {batch}, {steps} steps, {repeats} repeats")
        result = measure(batch, repeats, ctx.device, steps)
        for name, r in result.items():
            if not name.startswith("_"):
                ctx.log(
                    f"  {name}: {r['ms_per_step']:.2f} ms/step, overhead {r['overhead_pct']:.2f}% "
                    f"({r['overhead_pct_min']:.2f} to {r['overhead_pct_max']:.2f}); "
                    f"vs replay {r['overhead_pct_vs_replay']:.2f}%"
                )
        cases[f"b{batch}"] = result
    return {
        "steps": steps,
        "image": [3, 32, 32],
        "unet": {"diffusers/diffusionkit": SMALL_UNET, "lucidrains": LUCIDRAINS_UNET},
        "repeats": repeats,
        "method": "forward pre/post hooks on the network accumulate its time; overhead = "
        "(total - network) / network; cross-check: replay of the same number of calls",
        "cases": cases,
    }
