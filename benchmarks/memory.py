"""Benchmark 3: peak memory of training and sampling, each library in a fresh process.

Every (library, model, phase) runs in its own Python process, so that one library's allocations
and caches never count against another. The child builds the model, its optimizer and data,
then resets the kernel's resident-set high-water mark (``/proc/self/clear_refs``, Linux >= 4.0)
and runs the workload; reported are the peak RSS (``VmHWM``), the RSS just before the workload
("baseline": interpreter, libraries, weights, optimizer state) and their difference (what the
workload itself adds). On a GPU, ``torch.cuda.max_memory_allocated`` after a reset is reported
too. Where the high-water mark cannot be reset, ``ru_maxrss`` (peak since process start) is used
and the result says so.

Workloads, with each library's own public API:

* ``train``: ``TRAIN_STEPS`` optimizer steps (loss, backward, AdamW) at the given batch;
* ``sample``: the full ancestral chain of a ``SAMPLE_STEPS``-step schedule at the given batch
  (memory does not grow with the chain's length: no library keeps the intermediates by default).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # ``python benchmarks/memory.py`` as a child process
    sys.path.insert(0, str(ROOT))

from benchmarks.common import Context  # noqa: E402

NAME = "memory"
TRAIN_STEPS = 3
SAMPLE_STEPS = 25  # the shortest chain a linear schedule scaled by 1000 / T allows is T > 20
LIBRARIES = ("diffusers", "diffusionkit", "lucidrains")
#: model -> (batch, libraries that run it)
MODELS: dict[str, tuple[int, tuple[str, ...]]] = {
    "small": (64, LIBRARIES),  # benchmark 2's ~1M-parameter U-Nets at 32x32x3
    "cifar10": (16, ("diffusers", "diffusionkit")),  # the DDPM CIFAR-10 U-Net (35.7M)
}
QUICK_MODELS = ("small",)


# ------------------------------------------------------------------------------ child process
def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset_worked: bool) -> int:
    if reset_worked:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _workload(library: str, model: str, phase: str, batch: int, device: Any):
    """Build everything for one measurement; return the zero-argument workload."""
    import torch
    import torch.nn.functional as F

    from benchmarks.sampling_overhead import LUCIDRAINS_UNET, SMALL_UNET
    from benchmarks.speed import DDPM_CIFAR10_UNET, diffusers_unet

    config = SMALL_UNET if model == "small" else DDPM_CIFAR10_UNET
    shape = (batch, config["in_channels"], config["sample_size"], config["sample_size"])
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    T = SAMPLE_STEPS if phase == "sample" else 1000

    if library == "diffusers":
        from diffusers import DDPMPipeline, DDPMScheduler

        net = diffusers_unet(config, seed=0).to(device)
        scheduler = DDPMScheduler(num_train_timesteps=T)
        if phase == "sample":
            pipe = DDPMPipeline(unet=net, scheduler=scheduler)
            pipe.set_progress_bar_config(disable=True)
            return lambda: pipe(batch_size=batch, num_inference_steps=T, output_type="pt")
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step() -> None:
            noise = torch.randn_like(data)
            t = torch.randint(0, T, (batch,), device=device)
            out = net(scheduler.add_noise(data, noise, t), t).sample
            opt.zero_grad(set_to_none=True)
            F.mse_loss(out, noise).backward()
            opt.step()

    elif library == "diffusionkit":
        from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet

        torch.manual_seed(0)
        dk_config = {
            "in_channels": config["in_channels"],
            "dim": config["block_out_channels"][0],
            "dim_mults": tuple(
                c // config["block_out_channels"][0] for c in config["block_out_channels"]
            ),
            "attns": tuple(b.startswith("Attn") for b in config["down_block_types"]),
            "n_blocks": config["layers_per_block"],
            "groups": config["norm_num_groups"],
        }
        ddpm = DenoiseDiffusion(UNet(**dk_config), LinearSchedule(timesteps=T)).to(device)
        if phase == "sample":
            return lambda: ddpm.reverse_sample(shape, generator=g, progress=False)
        opt = torch.optim.AdamW(ddpm.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            ddpm.loss(data).backward()
            opt.step()

    elif library == "lucidrains":
        from benchmarks.quality.peers import import_lucidrains

        Unet, GaussianDiffusion = import_lucidrains()
        torch.manual_seed(0)
        lucid = GaussianDiffusion(
            Unet(**LUCIDRAINS_UNET), image_size=config["sample_size"], timesteps=T
        ).to(device)
        if phase == "sample":
            return lambda: lucid.sample(batch_size=batch)
        opt = torch.optim.AdamW(lucid.parameters(), lr=1e-4)
        data01 = (data + 1) / 2  # lucidrains normalizes [0, 1] data itself

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            lucid(data01).backward()
            opt.step()

    else:
        raise ValueError(f"unknown library {library!r}; expected one of {LIBRARIES}")

    def train() -> None:
        for _ in range(TRAIN_STEPS):
            step()

    return train


def child(library: str, model: str, phase: str, batch: int, threads: int, device: str) -> dict:
    """Measure one workload in this process and return the numbers."""
    import torch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    work = _workload(library, model, phase, batch, dev)
    gc.collect()
    baseline = _rss_bytes()
    reset = _reset_peak()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    work()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    out = {
        "library": library,
        "model": model,
        "phase": phase,
        "batch": batch,
        "baseline_rss_mb": baseline / 2**20,
        "peak_rss_mb": _peak_bytes(reset) / 2**20,
        "peak_source": "VmHWM after clear_refs" if reset else "ru_maxrss (since start)",
        "seconds": seconds,
    }
    out["workload_rss_mb"] = out["peak_rss_mb"] - out["baseline_rss_mb"]
    if dev.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


# ------------------------------------------------------------------------------ parent process
def measure(
    library: str, model: str, phase: str, batch: int, threads: int, device: str
) -> dict[str, Any]:
    """Run :func:`child` in a fresh interpreter and return its result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        library,
        model,
        phase,
        str(batch),
        str(threads),
        device,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {cmd[3:]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(ctx: Context) -> dict[str, Any]:
    """Run benchmark 3 and return its results (JSON-serializable)."""
    rows = []
    for model, (batch, libraries) in MODELS.items():
        if ctx.quick and model not in QUICK_MODELS:
            continue
        for phase in ("train", "sample"):
            for library in libraries:
                r = measure(library, model, phase, batch, ctx.threads, str(ctx.device))
                ctx.log(
                    f"memory: {model} {phase} b{batch} {library}: peak {r['peak_rss_mb']:.0f} MB "
                    f"(+{r['workload_rss_mb']:.0f} MB over {r['baseline_rss_mb']:.0f} MB)"
                )
                rows.append(r)
    return {"train_steps": TRAIN_STEPS, "sample_steps": SAMPLE_STEPS, "rows": rows}


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--child", nargs=6, metavar=("LIB", "MODEL", "PHASE", "B", "THREADS", "DEV")
    )
    args = parser.parse_args()
    if not args.child:
        parser.error("this module is run by benchmarks/run.py; use --only memory there")
    library, model, phase, batch, threads, device = args.child
    print(json.dumps(child(library, model, phase, int(batch), int(threads), device)))


if __name__ == "__main__":
    _main()
