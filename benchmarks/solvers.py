"""Benchmark 6: sample quality against network calls, every solver, side by side with diffusers.

Issue 13's question: how good are samples at 5, 10, 20 and 50 network calls? Every diffusionkit
solver and the matching diffusers scheduler run on the *same weights* from the *same starting
noise*, and their samples are scored with the quality benchmark's metric (the Frechet distance
in the feature space of the shipped digits classifier, ``benchmarks.quality``) against the
held-out digits. The models:

* the main job's model, ``diffusionkit train --data digits`` (16x16 padded digits, cosine
  schedule, T = 250, eps prediction, x0 clipped): a run folder given with ``--solvers-model``,
  else ``runs/digits`` when it exists, else trained here with the same command's defaults;
  samples are scored on their central 8x8 crop (the padding removed);
* the quality benchmark's two diffusionkit configurations (8x8 digits, T = 100: eps + linear,
  v + sigmoid), trained here with ``quality_budget.TrainingRun`` (seed 0, the last checkpoint of
  the budget), their EMA weights.

Every model clips ``x0_hat`` (``x0_processing=ClipX0()``), and so does every diffusers
scheduler that can (``clip_sample=True`` for DDPM and DDIM; ``thresholding=True,
sample_max_value=1.0`` for DPM-Solver and UniPC, which is plain clipping); diffusers' Euler, Euler
ancestral and Heun schedulers cannot clip, and run as diffusers users run them. diffusers runs with
each scheduler's default timestep spacing (its users' experience), diffusionkit with its default
(``trailing``). diffusers' Heun makes ``2N - 1`` calls for ``N`` steps: it gets the largest ``N``
within the budget, and the table shows the calls it made. The full chain (every timestep, the
model's own DDPM sampler) is the reference the few-step results are compared with.

The loop's own cost is measured as in benchmark 2 (network time by forward hooks, overhead =
(total - network) / network) for every diffusionkit solver at batch 64 and 20 calls on the
~1.1M-parameter U-Net of benchmark 2.
"""

from __future__ import annotations

import inspect
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import Context

NAME = "solvers"
CALLS = (5, 10, 20, 50)
QUICK_CALLS = (5, 10)
N_SAMPLES = 500
QUICK_SAMPLES = 100
SEEDS = (0, 1)  # starting-noise seeds: each score is the mean over them
QUICK_SEEDS = (0,)
OURS = (
    "ddpm",
    "ddim",
    "dpm++2m",
    "dpm++3m",
    "dpm++2m-sde",
    "unipc",
    "euler",
    "euler-ancestral",
    "heun",
)
_CLIP = {"thresholding": True, "sample_max_value": 1.0}  # diffusers' clipping for these
#: diffusers' schedulers: label -> (class name, arguments beyond the model's schedule)
THEIRS: dict[str, tuple[str, dict[str, Any]]] = {
    "DDPM": ("DDPMScheduler", {"clip_sample": True}),
    "DDIM": ("DDIMScheduler", {"clip_sample": True}),
    "DPM-Solver++ 2M": ("DPMSolverMultistepScheduler", {"solver_order": 2, **_CLIP}),
    "DPM-Solver++ 3M": ("DPMSolverMultistepScheduler", {"solver_order": 3, **_CLIP}),
    "DPM-Solver++ 2M SDE": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **_CLIP},
    ),
    "UniPC": ("UniPCMultistepScheduler", _CLIP),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
}
_PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
OVERHEAD_BATCH, OVERHEAD_CALLS, OVERHEAD_REPEATS = 64, 20, 5
#: issue 13's targets, as stated to the reader
TARGETS = {"overhead_pct": 1.0, "full_chain_margin": 0.10}


@dataclass
class SolverModel:
    """A trained model to sample, and how its samples are scored."""

    name: str
    description: str
    model: Any  # a DenoiseDiffusion with x0_processing = ClipX0()
    image: tuple[int, int, int]
    reference: Tensor  # held-out images as the classifier sees them, [N x 1 x 8 x 8]
    to_scored: Callable[[Tensor], Tensor]  # samples -> the classifier's 8x8


def _crop_center_8(x: Tensor) -> Tensor:
    """The 8x8 digit inside the main job's 16x16 canvas (``Fit.PAD`` centres it)."""
    top = (x.shape[-1] - 8) // 2
    return x[..., top : top + 8, top : top + 8]


def _raw_dir(ctx: Context) -> Path:
    folder = ctx.out_dir / "raw" / NAME
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _main_job_model(ctx: Context) -> Path:
    """The run folder of the README's main job: given, ``runs/digits``, or trained here."""
    root = Path(__file__).resolve().parent.parent
    for candidate in (ctx.solvers_model, root / "runs" / "digits"):
        if candidate is not None and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    out = _raw_dir(ctx) / ("digits-quick" if ctx.quick else "digits")
    if not (out / "config.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "diffusionkit", "train", "--data", "digits"]
        command += ["--out", str(out), "--no-progress", "--threads", str(ctx.threads)]
        if ctx.quick:
            command += ["--steps", "200", "--sample-every", "0", "--checkpoint-every", "200"]
        ctx.log(f"training the main job's model: {' '.join(command)}")
        subprocess.run(command, check=True)
    return out


def _quality_model(ctx: Context, label: str) -> Any:
    """The quality benchmark's diffusionkit configuration ``label``, trained (and cached)."""
    from benchmarks import quality_budget
    from diffusionkit import DenoiseDiffusion

    budget = quality_budget.QUICK if ctx.quick else quality_budget.FULL
    steps = budget.checkpoints[-1]
    slug = label.replace(" ", "").replace("(", "-").replace(")", "").replace(",", "-")
    folder = _raw_dir(ctx) / f"{slug}-{steps}"
    if not (folder / "config.json").is_file():
        ctx.log(f"training {label} for {steps} steps (the quality benchmark's loop, seed 0)")
        run = quality_budget.TrainingRun(label, 0, budget)
        run.train_to(steps)
        with run.averaged():
            run.contestant.model.save_pretrained(folder)
    return DenoiseDiffusion.from_pretrained(folder)


def models(ctx: Context) -> list[SolverModel]:
    """The models this benchmark samples (see the module docstring)."""
    from benchmarks.quality import digits_split
    from diffusionkit import ClipX0, DenoiseDiffusion

    reference = digits_split().test_images
    main = DenoiseDiffusion.from_pretrained(_main_job_model(ctx))
    main.x0_processing = ClipX0()  # as the command line's models clip, in every format
    out = [
        SolverModel(
            "main job",
            f"digits 16x16, {type(main.schedule).__name__} T = {main.timesteps}, "
            f"{main.prediction.value} prediction",
            main,
            (1, 16, 16),
            reference,
            _crop_center_8,
        )
    ]
    for label in ("diffusionkit (eps, linear)", "diffusionkit (v, sigmoid)"):
        model = _quality_model(ctx, label)
        model.x0_processing = ClipX0()
        setting = label.split("(")[1].rstrip(")")
        out.append(
            SolverModel(
                f"quality ({setting})",
                f"digits 8x8, T = {model.timesteps}, {setting}",
                model,
                (1, 8, 8),
                reference,
                lambda x: x,
            )
        )
    return out


# ---------------------------------------------------------------------------- sampling
def _ours(m: SolverModel, solver: str, calls: int | None, noise: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    sampler = None if calls is None else solver  # None: the model's own, full chain
    return m.model.reverse_sample(
        noise=noise, generator=g, sampler=sampler, steps=calls, progress=False, clip=True
    )


def _diffusers_scheduler(m: SolverModel, label: str) -> Any:
    import diffusers

    cls_name, kwargs = THEIRS[label]
    return getattr(diffusers, cls_name)(
        num_train_timesteps=m.model.timesteps,
        trained_betas=m.model.schedule.betas.tolist(),
        prediction_type=_PREDICTION_TYPES[m.model.prediction.value],
        **kwargs,
    )


def diffusers_steps(label: str, calls: int) -> tuple[int, int]:
    """``(num_inference_steps, network calls)`` of diffusers' scheduler within ``calls``."""
    if THEIRS[label][0] == "HeunDiscreteScheduler":  # N steps are 2N - 1 calls
        steps = (calls + 1) // 2
        return steps, 2 * steps - 1
    return calls, calls


def _theirs(m: SolverModel, label: str, calls: int, noise: Tensor, seed: int) -> Tensor:
    """diffusers' own loop (``set_timesteps``, ``scale_model_input``, ``step``) on our network."""
    scheduler = _diffusers_scheduler(m, label)
    scheduler.set_timesteps(diffusers_steps(label, calls)[0])
    g = torch.Generator().manual_seed(seed)
    # deterministic schedulers take no generator
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": g} if takes_generator else {}
    x = noise * scheduler.init_noise_sigma
    net = m.model.net.eval()
    with torch.inference_mode():
        for t in scheduler.timesteps:
            out = net(scheduler.scale_model_input(x, t), t.expand(x.shape[0]))
            x = scheduler.step(out, t, x, **extra).prev_sample
    return x.clamp(-1.0, 1.0)


def _fd(m: SolverModel, samples: list[Tensor], seeds: tuple[int, ...]) -> dict[str, Any]:
    from benchmarks.quality import score

    values = [
        score(m.to_scored(s).clamp(-1, 1), m.reference, seed=seed)["fd"]
        for s, seed in zip(samples, seeds, strict=True)
    ]
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "values": values,
    }


def quality(ctx: Context, m: SolverModel, calls: tuple[int, ...], n: int, seeds: tuple[int, ...]):
    """FD of every solver of both libraries at every budget, and of the full chain."""
    noises = [torch.randn((n, *m.image), generator=torch.Generator().manual_seed(s)) for s in seeds]

    def scored(draw: Callable[[Tensor, int], Tensor]) -> dict[str, Any]:
        start = time.perf_counter()
        samples = [draw(noise, 100 + seed) for noise, seed in zip(noises, seeds, strict=True)]
        result = _fd(m, samples, seeds)
        result["seconds"] = time.perf_counter() - start
        return result

    full = scored(lambda noise, s: _ours(m, "", None, noise, s))
    ctx.log(f"  {m.name}: full chain ({m.model.timesteps} calls) FD {full['mean']:.3f}")
    ours: dict[str, dict[str, Any]] = {}
    theirs: dict[str, dict[str, Any]] = {}
    for c in calls:
        for solver in OURS:
            ours.setdefault(solver, {})[str(c)] = {
                **scored(lambda noise, s, solver=solver, c=c: _ours(m, solver, c, noise, s)),
                "calls": c,
            }
        for label in THEIRS:
            theirs.setdefault(label, {})[str(c)] = {
                **scored(lambda noise, s, label=label, c=c: _theirs(m, label, c, noise, s)),
                "calls": diffusers_steps(label, c)[1],
            }
        best_ours = min(ours, key=lambda k: ours[k][str(c)]["mean"])
        best_theirs = min(theirs, key=lambda k: theirs[k][str(c)]["mean"])
        ctx.log(
            f"  {m.name}, {c} calls: best diffusionkit {best_ours} "
            f"{ours[best_ours][str(c)]['mean']:.3f}, best diffusers {best_theirs} "
            f"{theirs[best_theirs][str(c)]['mean']:.3f}"
        )
    return {
        "description": m.description,
        "timesteps": m.model.timesteps,
        "full_chain": full,
        "diffusionkit": ours,
        "diffusers": theirs,
        "verdict": verdict(full, ours, theirs, calls),
    }


def verdict(
    full: dict[str, Any],
    ours: dict[str, dict[str, Any]],
    theirs: dict[str, dict[str, Any]],
    calls: tuple[int, ...],
) -> dict[str, Any]:
    """Issue 13's targets: at 10 calls the best diffusionkit solver is no worse than diffusers'
    best and within 10% of the full chain; at 5 calls it is below diffusers' best (mean FDs)."""
    out: dict[str, Any] = {}
    for c in calls:
        key = str(c)
        best_ours = min(ours, key=lambda k: ours[k][key]["mean"])
        best_theirs = min(theirs, key=lambda k: theirs[k][key]["mean"])
        dk, peer = ours[best_ours][key]["mean"], theirs[best_theirs][key]["mean"]
        row: dict[str, Any] = {
            "diffusionkit": best_ours,
            "diffusionkit_fd": dk,
            "diffusers": best_theirs,
            "diffusers_fd": peer,
            "full_chain_fd": full["mean"],
        }
        if c == 10:
            row["met_vs_diffusers"] = dk <= peer
            row["met_vs_full_chain"] = dk <= full["mean"] * (1 + TARGETS["full_chain_margin"])
        if c == 5:
            row["met_vs_diffusers"] = dk < peer
        out[key] = row
    return out


# ---------------------------------------------------------------------------- overhead
def overhead(ctx: Context, repeats: int) -> dict[str, Any]:
    """Each solver's loop cost at batch 64 and 20 calls, in % of the network's own time."""
    from benchmarks.sampling_overhead import SMALL_UNET, NetTimer
    from benchmarks.speed import same_weights_pair
    from diffusionkit import ClipX0, DenoiseDiffusion, LinearSchedule

    _, net, _ = same_weights_pair(SMALL_UNET, seed=0, device=ctx.device)
    model = DenoiseDiffusion(net, LinearSchedule(100), x0_processing=ClipX0()).to(ctx.device)
    timer = NetTimer(net, ctx.device, capture=False)
    shape = (OVERHEAD_BATCH, 3, 32, 32)
    out: dict[str, Any] = {}
    try:
        for solver in OURS:
            ratios, totals = [], []
            for r in range(repeats + 1):  # the first run warms up
                timer.reset()
                start = time.perf_counter()
                model.reverse_sample(
                    shape,
                    generator=torch.Generator(ctx.device).manual_seed(r),
                    sampler=solver,
                    steps=OVERHEAD_CALLS,
                    progress=False,
                )
                total = time.perf_counter() - start
                if r:
                    ratios.append(100.0 * (total - timer.seconds) / timer.seconds)
                    totals.append(total)
            out[solver] = {
                "overhead_pct": statistics.median(ratios),
                "overhead_pct_min": min(ratios),
                "overhead_pct_max": max(ratios),
                "ms_per_call": 1e3 * statistics.median(totals) / OVERHEAD_CALLS,
            }
            ctx.log(f"  overhead {solver}: {out[solver]['overhead_pct']:.2f}%")
    finally:
        timer.remove()
    return out


def run(ctx: Context) -> dict[str, Any]:
    """Run benchmark 6 and return its results (JSON-serializable)."""
    calls = QUICK_CALLS if ctx.quick else CALLS
    n = QUICK_SAMPLES if ctx.quick else N_SAMPLES
    seeds = QUICK_SEEDS if ctx.quick else SEEDS
    result: dict[str, Any] = {
        "calls": list(calls),
        "n_samples": n,
        "seeds": list(seeds),
        "models": {},
    }
    for m in models(ctx):
        ctx.log(f"solvers on {m.name} ({m.description})")
        result["models"][m.name] = quality(ctx, m, calls, n, seeds)
        # written as it goes: a long run killed late keeps what it measured
        (_raw_dir(ctx) / "partial.json").write_text(json.dumps(result, indent=1))
    result["overhead"] = {
        "batch": OVERHEAD_BATCH,
        "calls": OVERHEAD_CALLS,
        "solvers": overhead(ctx, 2 if ctx.quick else OVERHEAD_REPEATS),
    }
    return result
