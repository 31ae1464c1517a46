"""Shared benchmark machinery: the machine, the thread count, fair timing, and the fp32 peaks.

Every comparison in ``benchmarks/`` times the libraries *alternating* in one process: a warm-up
call of each, then ``repeats`` rounds in which each library runs once, the order rotating every
round so that no library always follows the same neighbour. Times are reported as the median
with the min-max range. Nothing here is specific to one library.
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "Context",
    "Timing",
    "cpu_model",
    "load_average",
    "machine_info",
    "measure_peaks",
    "n_params",
    "python_command",
    "set_threads",
    "sync",
    "time_alternating",
]


@dataclass
class Context:
    """What every benchmark module's ``run(ctx)`` receives.

    Attributes:
        quick: the short variant (a few minutes in all) instead of the full run.
        device: where the networks run.
        threads: torch's intra-op thread count, fixed for the whole run.
        out_dir: where results (JSON, Markdown, PNG) go.
        log: prints one progress line.
        quality_changes: fields of ``quality_budget.Budget`` that replace those of the quality
            benchmarks' default budgets (e.g. ``{"n_samples": 500}``).
        quality_settings: run only the quality configurations of these settings (e.g.
            ``("v, sigmoid",)``); empty: all of them.
        solvers_model: the run folder of the main job's model for the solver benchmark
            (default: ``runs/digits`` when it exists, else trained by the benchmark).
    """

    quick: bool
    device: torch.device
    threads: int
    out_dir: Path
    log: Callable[[str], None] = print
    quality_changes: dict[str, Any] = field(default_factory=dict)
    quality_settings: tuple[str, ...] = ()
    solvers_model: Path | None = None


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo`` (``None`` where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


#: instruction-set extensions that decide fp32 and bf16 speed on x86 CPUs
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_features() -> list[str]:
    """Which of :data:`CPU_FEATURES` the CPU reports in ``/proc/cpuinfo`` (empty elsewhere)."""
    flags = set((_cpuinfo("flags") or "").split())
    return [name for name in CPU_FEATURES if name in flags]


def load_average() -> float:
    """The 1-minute load average (``nan`` where the OS does not report one)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return float("nan")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op thread count (``None``: one per CPU core) and return it."""
    n = threads or os.cpu_count() or 1
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a reader needs to reproduce a number: CPU, cores, threads, versions, GPU."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "versions": {
            name: _version(name)
            for name in ("torch", "diffusionkit", "diffusers", "denoising-diffusion-pytorch")
        },
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a host clock measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def n_params(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class Timing:
    """Wall-clock seconds of repeated runs of one thing."""

    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def to_dict(self) -> dict[str, Any]:
        return {
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "n": len(self.times),
            "times_s": list(self.times),
        }


def time_alternating(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, alternating between them.

    Args:
        fns: name -> zero-argument callable doing one unit of work.
        repeats: timed runs of each callable (>= 1).
        warmup: untimed runs of each callable first (allocator, oneDNN primitive caches).
        device: synchronize this device around each run (GPU work is asynchronous).

    Returns:
        name -> :class:`Timing` with ``repeats`` times. Round ``r`` runs the callables starting
        at index ``r mod len(fns)``, so each one runs first equally often.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(fns)
    dev = device or torch.device("cpu")
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(dev)
    out = {name: Timing() for name in names}
    for r in range(repeats):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            sync(dev)
            start = time.perf_counter()
            fns[name]()
            sync(dev)
            out[name].times.append(time.perf_counter() - start)
    return out


def _best_rate(fn: Callable[[], Any], flops: float, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (primitive creation)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def measure_peaks(device: torch.device, *, repeats: int = 5) -> dict[str, Any]:
    """Measure the machine's fp32 matmul and 3x3-convolution throughput (GFLOP/s).

    The matmul peak is the best of square products (1024 and 2048); the conv peak is the best
    3x3 convolution among the shapes that dominate the DDPM CIFAR-10 U-Net at batch 16
    (128 channels at 32x32, 256 at 16x16 and 8x8), in both NCHW and channels_last layouts.
    FLOPs are ``2 * multiply-adds``, the convention of ``torch.utils.flop_counter``.
    """
    results: dict[str, Any] = {"matmul": {}, "conv3x3": {}}
    with torch.inference_mode():
        for n in (1024, 2048):
            a = torch.randn(n, n, device=device)
            b = torch.randn(n, n, device=device)
            rate = _best_rate(lambda a=a, b=b: a @ b, 2.0 * n**3, repeats, device)
            results["matmul"][f"{n}x{n}"] = rate
        for ch, size in ((128, 32), (256, 16), (256, 8)):
            conv = nn.Conv2d(ch, ch, 3, padding=1).to(device)
            x = torch.randn(16, ch, size, size, device=device)
            flops = 2.0 * 16 * ch * ch * 9 * size * size
            for layout in ("nchw", "channels_last"):
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                c = conv.to(memory_format=fmt)
                xi = x.contiguous(memory_format=fmt)
                rate = _best_rate(lambda c=c, xi=xi: c(xi), flops, repeats, device)
                results["conv3x3"][f"16x{ch}x{size}x{size} {layout}"] = rate
    results["matmul_peak_gflops"] = max(results["matmul"].values())
    results["conv_peak_gflops"] = max(results["conv3x3"].values())
    return results


def python_command() -> str:
    """The command line that started this process, as a reader would retype it."""
    return shlex.join(["python", *sys.argv])
