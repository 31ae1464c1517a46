"""Benchmark 8: learned against fixed variances at an equal training budget (issue 16).

Two models trained by ``diffusionkit train --data digits`` with the main job's settings (16x16
padded digits, 0.28M-parameter U-Net, cosine T = 250, eps, clipped x0, 2,000 steps of batch
64, seed 0), one of them with ``--learned-variance`` (improved DDPM: the network's second
output channel sets the reverse variance, trained with the hybrid loss ``L_simple + 0.001
L_vlb``; Nichol & Dhariwal 2021). Both see the same examples in the same order.

* **Likelihood**: ``model.nll`` on the 359 held-out digits (``DigitsDataset(split="heldout")``,
  never trained on), quantized to the 8-bit grid, all 250 terms of the bound; bits/dim, mean
  and standard error over the images (the padding counts as pixels, so values are lower than on
  uncropped data). The fixed model's reverse variance is its sampler's, ``beta_tilde_t``.
* **Sample quality**: the model's own DDPM ancestral sampler (which uses the learned variance)
  at 25, 50, 100 and all 250 network calls, 500 samples x 2 starting-noise seeds, scored as
  benchmark 6 scores the main job's model (FD of the digits classifier's features of the
  central 8x8 crops to ``digits_split().test_images``; lower is better).
* **Cost**: wall time of ``nll`` on a batch of 64 digits over all 250 terms against
  ``reverse_sample`` of 64 images with all 250 steps, alternated, 3 runs each (the target:
  at most 2x).

Targets (issue 16): the learned variance lowers bits/dim, and wins on FD at 50 calls with the
same sampler. The trained models are cached in ``results/raw/likelihood/``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import Context, time_alternating

NAME = "likelihood"
ROOT = Path(__file__).resolve().parent.parent
CALLS, QUICK_CALLS = (25, 50, 100, 250), (10, 20)
N_SAMPLES, QUICK_N_SAMPLES = 500, 64
SEEDS, QUICK_SEEDS = (0, 1), (0,)
TIMING_REPEATS, QUICK_TIMING_REPEATS = 3, 1
VARIANTS = {"fixed (beta_tilde)": [], "learned": ["--learned-variance"]}
#: issue 16's cost target: NLL of a batch over all T terms / sampling it with all T steps
TARGET_COST_RATIO = 2.0


def _train(ctx: Context, out: Path, flags: list[str]) -> Path:
    if (out / "config.json").is_file():
        return out
    command = [sys.executable, "-m", "diffusionkit", "train", "--data", "digits", *flags]
    command += ["--out", str(out), "--no-progress", "--threads", str(ctx.threads)]
    command += ["--sample-every", "0"]
    if ctx.quick:
        command += ["--steps", "100", "--timesteps", "50", "--checkpoint-every", "100"]
    ctx.log("  " + " ".join(command[1:]))
    subprocess.run(command, check=True, cwd=ROOT)
    return out


def _quantized(x: Tensor) -> Tensor:
    """``x`` in ``[-1, 1]`` on the 8-bit grid ``-1 + 2 k / 255`` (the decoder's bins)."""
    return ((x + 1.0) * 127.5).round() / 127.5 - 1.0


def heldout_digits() -> Tensor:
    """The 359 held-out digits ``(N, 1, 16, 16)`` as the main job's model sees them, 8-bit."""
    from diffusionkit.data import DigitsDataset

    data = DigitsDataset(16, split="heldout")
    return _quantized(torch.stack([data[i][0] for i in range(len(data))]))


def _crop_center_8(x: Tensor) -> Tensor:
    top = (x.shape[-1] - 8) // 2
    return x[..., top : top + 8, top : top + 8]


def bits_per_dim(model: Any, images: Tensor, batch: int = 128) -> dict[str, Any]:
    """The exact bound on ``images`` (all T terms), and its mean term per timestep."""
    parts = [
        model.nll_terms(chunk, generator=torch.Generator().manual_seed(i), progress=False)
        for i, chunk in enumerate(images.split(batch))
    ]
    values = torch.cat([p.total for p in parts])
    terms = torch.cat([p.terms for p in parts])  # (N, T), timesteps T-1 .. 0
    return {
        "bpd": float(values.mean()),
        "bpd_stderr": float(values.std() / len(values) ** 0.5),
        "prior_bpd": float(torch.cat([p.prior for p in parts]).mean()),
        "images": len(values),
        # the mean term at timestep t = 0, 1, ..., T-1 (bits/dim), for the chart
        "terms_by_timestep": terms.mean(0).flip(0).tolist(),
    }


def fd_at(model: Any, calls: int, n: int, seeds: tuple[int, ...], reference: Tensor) -> dict:
    from benchmarks.quality import score

    fds = []
    for seed in seeds:
        samples = model.reverse_sample(
            (n, 1, 16, 16), generator=torch.Generator().manual_seed(seed), steps=calls,
            progress=False,
        )  # fmt: skip
        fds.append(score(_crop_center_8(samples).clamp(-1, 1), reference, seed=seed)["fd"])
    return {"fd": statistics.fmean(fds), "fd_values": fds}


def cost(model: Any, images: Tensor, repeats: int) -> dict[str, Any]:
    batch = images[:64]
    timings = time_alternating(
        {
            "nll": lambda: model.nll(
                batch, generator=torch.Generator().manual_seed(0), progress=False
            ),
            "sample": lambda: model.reverse_sample(
                batch.shape, generator=torch.Generator().manual_seed(0), progress=False
            ),
        },
        repeats=repeats,
        warmup=0,
    )
    ratio = timings["nll"].min / timings["sample"].min
    return {
        "nll_s": timings["nll"].to_dict(),
        "sample_s": timings["sample"].to_dict(),
        "ratio": ratio,
        "met": ratio <= TARGET_COST_RATIO,
    }


def run(ctx: Context) -> dict[str, Any]:
    from benchmarks.quality import digits_split
    from diffusionkit import DenoiseDiffusion

    raw = ctx.out_dir / "raw" / NAME
    raw.mkdir(parents=True, exist_ok=True)
    images = heldout_digits()
    reference = digits_split().test_images
    calls = QUICK_CALLS if ctx.quick else CALLS
    n = QUICK_N_SAMPLES if ctx.quick else N_SAMPLES
    seeds = QUICK_SEEDS if ctx.quick else SEEDS
    rows: dict[str, Any] = {}
    for name, flags in VARIANTS.items():
        folder = _train(ctx, raw / (name.split()[0] + ("-quick" if ctx.quick else "")), flags)
        model = DenoiseDiffusion.from_pretrained(folder)
        shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
        row: dict[str, Any] = {"model": str(shown)}
        row.update(bits_per_dim(model, images))
        row["fd"] = {str(c): fd_at(model, c, n, seeds, reference) for c in calls}
        ctx.log(
            f"  {name}: {row['bpd']:.3f} bits/dim; FD "
            + ", ".join(f"{c} calls {v['fd']:.3f}" for c, v in row["fd"].items())
        )
        row["cost"] = cost(model, images, QUICK_TIMING_REPEATS if ctx.quick else TIMING_REPEATS)
        ctx.log(f"  {name}: nll / sampling time {row['cost']['ratio']:.2f}")
        rows[name] = row
    fixed, learned = rows["fixed (beta_tilde)"], rows["learned"]
    at = "50" if "50" in learned["fd"] else str(calls[0])
    return {
        "command": "diffusionkit train --data digits [--learned-variance]",
        "n_samples": n,
        "seeds": list(seeds),
        "calls": list(calls),
        "rows": rows,
        "bpd_met": learned["bpd"] < fixed["bpd"],
        "fd_calls": int(at),
        "fd_met": learned["fd"][at]["fd"] < fixed["fd"][at]["fd"],
    }
