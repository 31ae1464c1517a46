"""Benchmark 8: learned against fixed variances at equal training budgets (issue 16).

Pairs of models trained by ``diffusionkit train --data digits`` with the main job's settings
(16x16 padded digits, 0.28M-parameter U-Net, cosine schedule, eps, clipped x0, batch 64, seed
0), one of each pair with ``--learned-variance`` (improved DDPM: the network's second output
channel sets the reverse variance, trained with the hybrid loss ``L_simple + 0.001 L_vlb``;
Nichol & Dhariwal 2021). Both see the same examples in the same order. Three budgets: the main
job's (T = 250, 2,000 steps), four times its training (8,000 steps), and the same with
T = 1000, where 50 calls skip 20 timesteps per step instead of 5 (the paper's gains are at
large skips: T = 4000 respaced to 50-100 steps).

* **Likelihood**: ``model.nll`` on the 359 held-out digits (``DigitsDataset(split="heldout")``,
  never trained on), quantized to the 8-bit grid, all T terms of the bound; bits/dim, mean
  and standard error over the images (the padding counts as pixels, so values are lower than on
  uncropped data). The fixed model's reverse variance is its sampler's, ``beta_tilde_t``.
* **Sample quality**: the model's own DDPM ancestral sampler (which uses the learned variance)
  at 25, 50, 100 and 250 network calls, 500 samples per starting-noise seed, scored as
  benchmark 6 scores the main job's model (FD of the digits classifier's features of the
  central 8x8 crops to ``digits_split().test_images``; lower is better): seeds 0 and 1, and at
  the target's 50 calls seeds 0-3, compared seed by seed (the same starting noise for both
  models), with the standard error of the mean difference.
* **Mean or variance**: at 50 calls the learned-variance network is also sampled with its
  prediction alone and the fixed ``beta_tilde_t``, which separates what its variance does to
  the samples from what the shared network's prediction does.
* **Cost** (main job's budget): wall time of ``nll`` on a batch of 64 digits over all T terms
  against ``reverse_sample`` of 64 images with all T steps, alternated, 3 runs each (the
  target: at most 2x).

Targets (issue 16): the learned variance lowers bits/dim, and wins on FD at 50 calls with the
same sampler. The trained models are cached in ``results/raw/likelihood/``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.common import Context, time_alternating

NAME = "likelihood"
ROOT = Path(__file__).resolve().parent.parent
CALLS, QUICK_CALLS = (25, 50, 100, 250), (10, 20)
#: the target's number of calls, and its seeds (paired: the same starting noise for both)
TARGET_CALLS, QUICK_TARGET_CALLS = 50, 20
TARGET_SEEDS, QUICK_TARGET_SEEDS = (0, 1, 2, 3), (0, 1)
N_SAMPLES, QUICK_N_SAMPLES = 500, 64
SEEDS, QUICK_SEEDS = (0, 1), (0,)
TIMING_REPEATS, QUICK_TIMING_REPEATS = 3, 1
FIXED, LEARNED = "fixed (beta_tilde)", "learned"
VARIANTS = {FIXED: [], LEARNED: ["--learned-variance"]}
#: the learned-variance network's prediction sampled with the fixed beta_tilde_t
LEARNED_MEAN = "learned network, beta_tilde"
#: issue 16's cost target: NLL of a batch over all T terms / sampling it with all T steps
TARGET_COST_RATIO = 2.0


@dataclass(frozen=True)
class Budget:
    """One training budget: ``diffusionkit train`` flags, and where its pair of models lives."""

    name: str
    folder: str  # the models are ``raw/likelihood/<folder><variant>``
    flags: tuple[str, ...]
    timed: bool = False  # measure the NLL/sampling cost on this pair


BUDGETS = (
    Budget("T = 250, 2,000 steps (main job)", "", (), timed=True),
    Budget("T = 250, 8,000 steps", "steps8000-", ("--steps", "8000")),
    Budget("T = 1000, 8,000 steps", "T1000-steps8000-", ("--timesteps", "1000", "--steps", "8000")),
)
QUICK_BUDGETS = (
    Budget(
        "T = 50, 100 steps (quick)",
        "quick-",
        ("--steps", "100", "--timesteps", "50", "--checkpoint-every", "100"),
        timed=True,
    ),
)


def _train(ctx: Context, out: Path, flags: list[str]) -> Path:
    if (out / "config.json").is_file():
        return out
    command = [sys.executable, "-m", "diffusionkit", "train", "--data", "digits", *flags]
    command += ["--out", str(out), "--no-progress", "--threads", str(ctx.threads)]
    command += ["--sample-every", "0"]
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
    return {"fd": statistics.fmean(fds), "fd_values": fds, "seeds": list(seeds)}


class _Prediction(nn.Module):
    """A learned-variance network's first ``channels`` outputs: its prediction alone."""

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.net(*args, **kwargs)[:, : self.channels]


def prediction_only(model: Any) -> Any:
    """``model``'s network and settings with the fixed ``beta_tilde_t`` in place of its learned
    variance (its default sampler, ``DDPMSampler("posterior")``, then draws with it)."""
    from diffusionkit import DenoiseDiffusion

    return DenoiseDiffusion(
        _Prediction(model.net, 1),
        model.schedule,
        prediction=model.prediction,
        sampler=model.sampler,
        x0_processing=model.x0_processing,
    )


def paired_difference(learned: list[float], fixed: list[float]) -> dict[str, float]:
    """Mean of ``learned - fixed`` over seeds that share their starting noise, and its
    standard error (negative: the learned variance scores better)."""
    diffs = [a - b for a, b in zip(learned, fixed, strict=True)]
    return {
        "mean": statistics.fmean(diffs),
        "stderr": statistics.stdev(diffs) / len(diffs) ** 0.5,
        "wins": sum(d < 0 for d in diffs),
        "n": len(diffs),
    }


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


def run_budget(ctx: Context, budget: Budget, images: Tensor, reference: Tensor) -> dict[str, Any]:
    """Train (or load) ``budget``'s pair of models and measure both."""
    from diffusionkit import DenoiseDiffusion

    raw = ctx.out_dir / "raw" / NAME
    raw.mkdir(parents=True, exist_ok=True)
    calls = QUICK_CALLS if ctx.quick else CALLS
    n = QUICK_N_SAMPLES if ctx.quick else N_SAMPLES
    seeds = QUICK_SEEDS if ctx.quick else SEEDS
    at = QUICK_TARGET_CALLS if ctx.quick else TARGET_CALLS
    target_seeds = QUICK_TARGET_SEEDS if ctx.quick else TARGET_SEEDS
    ctx.log(f" {budget.name}")
    rows: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for name, flags in VARIANTS.items():
        folder = raw / (budget.folder + name.split()[0])
        _train(ctx, folder, [*budget.flags, *flags])
        model = models[name] = DenoiseDiffusion.from_pretrained(folder)
        shown = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
        row: dict[str, Any] = {"model": str(shown), "timesteps": model.schedule.timesteps}
        row.update(bits_per_dim(model, images))
        row["fd"] = {
            str(c): fd_at(model, c, n, target_seeds if c == at else seeds, reference) for c in calls
        }
        ctx.log(
            f"  {name}: {row['bpd']:.3f} bits/dim; FD "
            + ", ".join(f"{c} calls {v['fd']:.3f}" for c, v in row["fd"].items())
        )
        if budget.timed:
            repeats = QUICK_TIMING_REPEATS if ctx.quick else TIMING_REPEATS
            row["cost"] = cost(model, images, repeats)
            ctx.log(f"  {name}: nll / sampling time {row['cost']['ratio']:.2f}")
        rows[name] = row
    ablation = fd_at(prediction_only(models[LEARNED]), at, n, target_seeds, reference)
    ctx.log(f"  {LEARNED_MEAN}: FD at {at} calls {ablation['fd']:.3f}")
    fixed, learned = rows[FIXED]["fd"][str(at)], rows[LEARNED]["fd"][str(at)]
    return {
        "name": budget.name,
        "command": " ".join(["diffusionkit train --data digits", *budget.flags]).rstrip(),
        "rows": rows,
        "learned_prediction_fd": ablation,
        "fd_difference": paired_difference(learned["fd_values"], fixed["fd_values"]),
        "fd_difference_prediction": paired_difference(ablation["fd_values"], fixed["fd_values"]),
        "bpd_met": rows[LEARNED]["bpd"] < rows[FIXED]["bpd"],
        "fd_met": learned["fd"] < fixed["fd"],
    }


def run(ctx: Context) -> dict[str, Any]:
    from benchmarks.quality import digits_split

    images = heldout_digits()
    reference = digits_split().test_images
    budgets = [
        run_budget(ctx, budget, images, reference)
        for budget in (QUICK_BUDGETS if ctx.quick else BUDGETS)
    ]
    return {
        "n_samples": QUICK_N_SAMPLES if ctx.quick else N_SAMPLES,
        "seeds": list(QUICK_SEEDS if ctx.quick else SEEDS),
        "target_seeds": list(QUICK_TARGET_SEEDS if ctx.quick else TARGET_SEEDS),
        "calls": list(QUICK_CALLS if ctx.quick else CALLS),
        "fd_calls": QUICK_TARGET_CALLS if ctx.quick else TARGET_CALLS,
        "budgets": budgets,
        "bpd_met": all(b["bpd_met"] for b in budgets),
        "fd_met": all(b["fd_met"] for b in budgets),
    }
