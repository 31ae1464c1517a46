"""Benchmark 7: conditional models trained from the command line (issue 14).

Two models, each trained by ``diffusionkit train`` and scored with the quality benchmark's
classifiers (``benchmarks.quality``):

* **class-conditional digits**: ``diffusionkit train --data digits --class-conditional`` (the
  main job's settings: 16x16 padded digits, 0.28M parameters, cosine T = 250, 2,000 steps, 10%
  condition dropout). For each guidance scale ``w`` in 0, 1, 2, 4, 100 samples of every class
  (labels 0-9) are drawn with the same starting noise, their central 8x8 crop (the padding
  removed) is classified by the shipped digits classifier, and the table gives the fraction
  classified as the label asked for, per class and overall, with the Frechet distance of all
  1,000 samples to the held-out digits (``digits_split().test_images``, as benchmark 6 scores
  the main job's model). ``w = 0`` is the unconditional model (the dropped-label one), ``w = 1``
  plain conditional sampling. The digits classifier scores 0.985 on real held-out digits.
* **2x super-resolution of Fashion-MNIST** (``examples/super_resolution.py``): trained with
  ``--cond-data`` on pairs of the 60,000 training images and their 14x14 copies; the model's
  outputs for 1,000 held-out test inputs against plain bilinear and bicubic upsampling, by the
  Fashion-MNIST classifier's Frechet distance to the 10,000 test images and accuracy (0.888 on
  the real 28x28 images), and by PSNR.

Both at the recommended few-step sampler (``dpm++2m-sde``, 10 network calls) and at 50 calls
of the model's DDPM sampler, means over two starting-noise seeds.

The trained models are cached in ``results/raw/conditional/`` (a run folder of the same
command in ``runs/digits-cond`` or ``runs/fashion-sr`` is used when present).
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import Context

NAME = "conditional"
ROOT = Path(__file__).resolve().parent.parent
GUIDANCE_SCALES = (0.0, 1.0, 2.0, 4.0)
#: (sampler, network calls) each model is sampled with
SAMPLERS = (("dpm++2m-sde", 10), ("ddpm", 50))
QUICK_SAMPLERS = (("dpm++2m-sde", 10),)
PER_CLASS, QUICK_PER_CLASS = 100, 10
SEEDS, QUICK_SEEDS = (0, 1), (0,)
SR_IMAGES, QUICK_SR_IMAGES = 1000, 100
#: issue 14's target: at the best guidance scale, this share of samples is of the asked class
TARGET_ACCURACY = 0.95


def _raw_dir(ctx: Context) -> Path:
    folder = ctx.out_dir / "raw" / NAME
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _crop_center_8(x: Tensor) -> Tensor:
    """The 8x8 digit inside a 16x16 canvas (the built-in digits are padded, centred)."""
    top = (x.shape[-1] - 8) // 2
    return x[..., top : top + 8, top : top + 8]


# ---------------------------------------------------------------------------- digits
def digits_model(ctx: Context) -> Path:
    """The class-conditional digits run: ``runs/digits-cond`` if it is there, else trained."""
    if not ctx.quick and (ROOT / "runs" / "digits-cond" / "config.json").is_file():
        return ROOT / "runs" / "digits-cond"
    out = _raw_dir(ctx) / ("digits-cond-quick" if ctx.quick else "digits-cond")
    if not (out / "config.json").is_file():
        command = [sys.executable, "-m", "diffusionkit", "train", "--data", "digits"]
        command += ["--class-conditional", "--out", str(out), "--no-progress"]
        command += ["--threads", str(ctx.threads)]
        if ctx.quick:
            command += ["--steps", "200", "--sample-every", "0", "--checkpoint-every", "200"]
        resume = ["--resume"] if (out / "checkpoints").is_dir() else []
        ctx.log(f"training: {' '.join(command + resume)}")
        subprocess.run(command + resume, check=True)
    return out


def guidance_table(
    model: Any,
    classifier: Any,
    reference: Tensor,
    *,
    image_shape: tuple[int, int, int],
    scales: tuple[float, ...],
    sampler: str,
    calls: int,
    per_class: int,
    seeds: tuple[int, ...],
    to_scored: Any = _crop_center_8,
) -> dict[str, Any]:
    """Per-class accuracy and FD of class-conditional samples at each guidance scale.

    Args:
        model: a class-conditional ``DenoiseDiffusion``.
        classifier: the benchmark's classifier of the samples' ``to_scored`` images.
        reference: held-out images ``(N, 1, h, w)`` for the Frechet distance.
        image_shape: ``(C, H, W)`` of the model's samples.
        scales: guidance scales.
        sampler: sampler name; ``calls``: network calls per sample.
        per_class: samples of each class per seed.
        seeds: starting-noise seeds (the same noise for every scale).
    """
    from benchmarks.quality import score

    classes = int(model.net.num_classes)
    labels = torch.arange(classes).repeat_interleave(per_class)  # (classes * per_class,)
    shape = (len(labels), *image_shape)
    out: dict[str, Any] = {}
    for scale in scales:
        accuracy, per, fds, seconds = [], [], [], 0.0
        for seed in seeds:
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
            start = time.perf_counter()
            samples = model.reverse_sample(
                noise=noise,
                labels=labels,
                guidance_scale=scale,
                sampler=sampler,
                steps=calls,
                generator=torch.Generator().manual_seed(100 + seed),
                progress=False,
                clip=True,
            )
            seconds += time.perf_counter() - start
            scored = to_scored(samples).clamp(-1, 1)
            with torch.inference_mode():
                predicted = classifier(scored.float()).argmax(1)
            hit = (predicted == labels).float()
            accuracy.append(float(hit.mean()))
            per.append(hit.view(classes, per_class).mean(1))
            fds.append(score(scored, reference, seed=seed)["fd"])
        out[f"{scale:g}"] = {
            "accuracy": statistics.fmean(accuracy),
            "accuracy_values": accuracy,
            "per_class": torch.stack(per).mean(0).tolist(),
            "fd": statistics.fmean(fds),
            "fd_values": fds,
            "seconds": seconds,
        }
    return out


def digits(ctx: Context) -> dict[str, Any]:
    """Benchmark 7a: class-conditional digits, accuracy and FD against the guidance scale."""
    from benchmarks.quality import digits_split, load_classifier
    from diffusionkit import DenoiseDiffusion
    from diffusionkit.cli.sample import image_size_of

    folder = digits_model(ctx)
    model = DenoiseDiffusion.from_pretrained(folder)
    size = image_size_of(str(folder), None)
    classifier = load_classifier("digits")
    split = digits_split()
    per_class = QUICK_PER_CLASS if ctx.quick else PER_CLASS
    seeds = QUICK_SEEDS if ctx.quick else SEEDS
    result: dict[str, Any] = {
        "model": str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder),
        "command": "diffusionkit train --data digits --class-conditional --out runs/digits-cond",
        "per_class": per_class,
        "seeds": list(seeds),
        "samplers": {},
    }
    with torch.inference_mode():
        real = classifier(split.test_images).argmax(1)
    result["real_accuracy"] = float((real == split.test_labels).float().mean())
    for sampler, calls in QUICK_SAMPLERS if ctx.quick else SAMPLERS:
        table = guidance_table(
            model, classifier, split.test_images, image_shape=(1, size, size),
            scales=GUIDANCE_SCALES, sampler=sampler, calls=calls, per_class=per_class,
            seeds=seeds,
        )  # fmt: skip
        best = max(table, key=lambda k: table[k]["accuracy"])
        result["samplers"][f"{sampler}, {calls} calls"] = {
            "scales": table,
            "best_scale": best,
            "met": table[best]["accuracy"] >= TARGET_ACCURACY,
        }
        ctx.log(
            f"  digits, {sampler} {calls} calls: accuracy "
            + ", ".join(f"w={k} {v['accuracy']:.3f} (FD {v['fd']:.2f})" for k, v in table.items())
        )
    return result


# ---------------------------------------------------------------------------- super-resolution
def example() -> ModuleType:
    """``examples/super_resolution.py`` as a module (its stages are the benchmark's)."""
    path = ROOT / "examples" / "super_resolution.py"
    spec = importlib.util.spec_from_file_location("super_resolution_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def super_resolution(ctx: Context) -> dict[str, Any]:
    """Benchmark 7b: the example's model against bilinear and bicubic upsampling."""
    from benchmarks.quality.fashion import FASHION_MNIST_DIR
    from diffusionkit import DenoiseDiffusion

    if not FASHION_MNIST_DIR.is_dir():
        return {"skipped": f"Fashion-MNIST files not installed in {FASHION_MNIST_DIR}"}
    sr = example()
    given = ROOT / "runs" / "fashion-sr"
    if not ctx.quick and (given / "config.json").is_file():
        out, data = given, ROOT / "runs" / "fashion-sr-pairs"
    else:
        raw = _raw_dir(ctx)
        out = raw / ("fashion-sr-quick" if ctx.quick else "fashion-sr")
        data = raw / ("fashion-sr-pairs-quick" if ctx.quick else "fashion-sr-pairs")
    steps = 100 if ctx.quick else 2000
    sr.prepare(
        data,
        train_images=4000 if ctx.quick else 60_000,
        test_images=1000 if ctx.quick else 10_000,
    )
    if not (out / "config.json").is_file():
        sr.train(data, out, steps=steps, tiny=False)
    model = DenoiseDiffusion.from_pretrained(out)
    pairs = sr.held_out(data, QUICK_SR_IMAGES if ctx.quick else SR_IMAGES)
    outputs = {}
    seeds = QUICK_SEEDS if ctx.quick else SEEDS
    for sampler, calls in QUICK_SAMPLERS if ctx.quick else SAMPLERS:
        for seed in seeds:
            images = sr.super_resolve(model, pairs["cond"], calls=calls, sampler=sampler, seed=seed)
            outputs[f"diffusionkit, {sampler}, {calls} calls, seed {seed}"] = images
    scores = sr.score({**outputs, **sr.baselines(pairs)}, pairs)
    rows: dict[str, Any] = {}
    for sampler, calls in QUICK_SAMPLERS if ctx.quick else SAMPLERS:
        name = f"diffusionkit, {sampler}, {calls} calls"
        runs = [scores[f"{name}, seed {seed}"] for seed in seeds]
        rows[name] = {key: statistics.fmean(r[key] for r in runs) for key in runs[0]}
        rows[name]["fd_values"] = [r["fd"] for r in runs]
    for name in ("bilinear", "bicubic", "true images"):
        rows[name] = scores[name]
    ctx.log("  super-resolution: " + ", ".join(f"{k} FD {v['fd']:.2f}" for k, v in rows.items()))
    return {
        "model": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
        "command": "python examples/super_resolution.py",
        "images": len(pairs["target"]),
        "seeds": list(seeds),
        "rows": rows,
    }


def run(ctx: Context) -> dict[str, Any]:
    return {"digits": digits(ctx), "super_resolution": super_resolution(ctx)}
