"""2x super-resolution of Fashion-MNIST (14x14 -> 28x28) with an image-conditional DDPM.

A real image-to-image task, trained from the command line and scored on held-out images:

1. **prepare**: writes the pairs as two folders of PNGs, ``DATA/{train,test}/hr/CLASS/N.png``
   (the 28x28 images) and ``DATA/{train,test}/lr/CLASS/N.png`` (their 14x14 copies, each
   pixel the mean of a 2x2 block), from the official 60,000 / 10,000 split. Class subfolders
   make the held-out labels available for scoring; the model does not use them.
2. **train**: ``diffusionkit train --data DATA/train/hr --cond-data DATA/train/lr
   --image-size 28 --channels 1 ...``: the network sees the low-resolution image upsampled
   to 28x28 (bicubic, as ``--cond-data`` images are read) beside the noisy image
   (``UNet(cond_channels=1)``), trained with a 10% condition dropout.
3. **evaluate**: the model's 28x28 images for held-out low-resolution inputs, against plain
   bilinear and bicubic upsampling of the same inputs, scored with the quality benchmark's
   Fashion-MNIST classifier (``benchmarks/quality``): the Frechet distance of its features
   to the 10,000 test images, its accuracy on the outputs (the real 28x28 images: 0.888),
   the PSNR to the true image, and the PSNR of the output's 2x2 means to the input
   (whether the output is consistent with what it was given).
4. **figure**: inputs, bilinear upsampling, model outputs and the true images side by side.

Needs the Fashion-MNIST files (``apt-get install dataset-fashion-mnist``, or downloaded once
by ``diffusionkit.data``) and, for scoring, a checkout of diffusionkit (the benchmark's
classifier lives in ``benchmarks/``).

Expected runtime: 17 minutes in all, measured on one thread of a 2-core AMD EPYC that was
shared with other work (``OMP_NUM_THREADS=1``): writing the 140,000 PNGs 41 s, training (the
default 2,000 steps of 64 pairs, a 0.28M-parameter U-Net) 15.7 min, super-resolving 1,000
held-out images at 10 network calls 27 s, scoring them seconds. ``--tiny`` runs every stage
on a tiny model in seconds, as the smoke test does.

    python examples/super_resolution.py [--data runs/fashion-sr-pairs] [--out runs/fashion-sr]
        [--train-steps 2000] [--eval-images 1000] [--calls 10] [--figure sr.png] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffusionkit import DenoiseDiffusion
from diffusionkit.data import PairedFolderDataset, load_fashion_mnist_arrays
from diffusionkit.utils import save_grid
from diffusionkit.utils.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent  # a checkout: benchmarks/ lies beside examples/
FACTOR = 2  # 28 -> 14

#: what ``diffusionkit train`` is given besides the folders (the measured run's settings)
TRAIN_SETTINGS = [
    "--image-size", "28", "--channels", "1", "--dim", "16", "--dim-mults", "1,2,2",
    "--attn-levels", "2", "--batch-size", "64", "--sample-every", "0", "--sample-count", "36",
    "--sample-steps", "50", "--checkpoint-every", "500",
]  # fmt: skip
TINY_SETTINGS = [
    "--image-size", "28", "--channels", "1", "--dim", "8", "--dim-mults", "1,2",
    "--attn-levels", "none", "--groups", "4", "--timesteps", "20", "--batch-size", "8",
    "--sample-every", "0", "--sample-count", "4", "--checkpoint-every", "0", "--no-progress",
]  # fmt: skip


def downsample(images: np.ndarray) -> np.ndarray:
    """``(N, 28, 28)`` uint8 -> ``(N, 14, 14)`` uint8, each pixel the rounded mean of a 2x2
    block (what a camera with half the resolution would see)."""
    n, h, w = images.shape
    blocks = images.reshape(n, h // FACTOR, FACTOR, w // FACTOR, FACTOR).astype(np.float64)
    return np.rint(blocks.mean(axis=(2, 4))).astype(np.uint8)


def prepare(data: Path, *, train_images: int, test_images: int) -> None:
    """Write the pairs of both splits under ``data`` (skipped where already complete)."""
    from PIL import Image

    for split, count in (("train", train_images), ("test", test_images)):
        folder = data / split
        done = folder / "complete.json"
        if done.is_file() and json.loads(done.read_text())["images"] == count:
            continue
        images, labels = load_fashion_mnist_arrays(train=split == "train")
        images, labels = images[:count], labels[:count]
        small = downsample(images)
        for i, (big, low, label) in enumerate(zip(images, small, labels, strict=True)):
            for kind, pixels in (("hr", big), ("lr", low)):
                path = folder / kind / str(int(label)) / f"{i:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
        atomic_write_text(done, json.dumps({"images": count}) + "\n")  # last: marks it done
        print(f"wrote {count} pairs to {folder}/hr and {folder}/lr")


def train(data: Path, out: Path, *, steps: int, tiny: bool) -> None:
    """Train through the command line (resuming a run that was interrupted)."""
    from diffusionkit.cli import main

    args = [
        "train",
        "--data",
        str(data / "train" / "hr"),
        "--cond-data",
        str(data / "train" / "lr"),
    ]
    args += ["--out", str(out), "--steps", str(steps), *(TINY_SETTINGS if tiny else TRAIN_SETTINGS)]
    if (out / "checkpoints").is_dir():
        args = ["train", "--out", str(out), "--resume", "--steps", str(steps)]
    print("diffusionkit " + " ".join(args), flush=True)
    code = main(args)
    if code != 0:
        raise SystemExit(code)


def held_out(data: Path, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``count`` held-out pairs, the same for every model and seed: a fixed random subset.

    Returns:
        ``target`` ``(count, 1, 28, 28)`` the true images, ``low`` ``(count, 1, 14, 14)`` the
        inputs, ``cond`` ``(count, 1, 28, 28)`` the inputs as the model reads them (bicubic
        upsampling, as in training), ``labels`` ``(count,)``; all in [-1, 1].
    """
    from diffusionkit.data.folder import load_image

    pairs = PairedFolderDataset(data / "test" / "hr", data / "test" / "lr", 28, channels=1)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    picks = order[: min(count, len(pairs))].tolist()
    items = [pairs[i] for i in picks]
    return {
        "target": torch.stack([item[0] for item in items]),
        "labels": torch.stack([item[1] for item in items]),
        "cond": torch.stack([item[2] for item in items]),
        "low": torch.stack([load_image(pairs.cond_files[i], (14, 14), 1) for i in picks]),
    }


def super_resolve(
    model: DenoiseDiffusion,
    cond: torch.Tensor,
    *,
    calls: int,
    sampler: str = "dpm++2m-sde",
    guidance_scale: float | None = None,
    seed: int = 0,
    batch: int = 500,
) -> torch.Tensor:
    """The model's ``(N, 1, 28, 28)`` images for conditioning images ``cond`` ``(N, 1, 28, 28)``."""
    out = []
    generator = torch.Generator().manual_seed(seed)
    for i in range(0, len(cond), batch):
        part = cond[i : i + batch]
        out.append(
            model.reverse_sample(
                part.shape,
                cond=part,
                sampler=sampler,
                steps=calls,
                guidance_scale=guidance_scale,
                generator=generator,
                clip=True,
                progress=False,
            )
        )
    return torch.cat(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (peak 1 on the [0, 1] scale), ``(N, C, H, W)``."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def scorer() -> Any:
    """The quality benchmark's Fashion-MNIST scoring, or ``None`` outside a checkout."""
    if not (ROOT / "benchmarks" / "quality").is_dir():
        return None
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks import quality

    return quality


def score(
    outputs: dict[str, torch.Tensor], pairs: dict[str, torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Scores of each set of ``(N, 1, 28, 28)`` outputs for the held-out ``pairs``."""
    quality = scorer()
    reference = None
    classifier = None
    if quality is not None:
        from benchmarks.quality.fashion import fashion_split

        classifier = quality.load_classifier("fashion-mnist")
        real = quality.extract_features(classifier, fashion_split().test_images)
        reference = quality.feature_statistics(real.numpy())
    results = {}
    low = pairs["low"]
    for name, images in outputs.items():
        row = {
            "psnr": psnr(images, pairs["target"]),
            "input_psnr": psnr(F.avg_pool2d(images, FACTOR), low),
        }
        if quality is not None and classifier is not None and reference is not None:
            features = quality.extract_features(classifier, images).numpy()
            row["fd"] = quality.frechet_distance_from_stats(
                *quality.feature_statistics(features), *reference
            )
            with torch.inference_mode():
                predicted = classifier(images.float()).argmax(1)
            row["accuracy"] = float((predicted == pairs["labels"]).float().mean())
        results[name] = row
    return results


def baselines(pairs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain upsampling of the inputs: bilinear (torch), bicubic (the model's own input), and
    the true images (the best any method can score)."""
    bilinear = F.interpolate(pairs["low"], scale_factor=FACTOR, mode="bilinear")
    return {"bilinear": bilinear, "bicubic": pairs["cond"], "true images": pairs["target"]}


def figure(path: Path, pairs: dict[str, torch.Tensor], outputs: torch.Tensor, count: int) -> Path:
    """Rows: the input (14x14, shown at 28x28 by pixel repetition), its bilinear upsampling,
    the model's output, the true image; one held-out example per column."""
    nearest = F.interpolate(pairs["low"][:count], scale_factor=FACTOR, mode="nearest")
    bilinear = F.interpolate(pairs["low"][:count], scale_factor=FACTOR, mode="bilinear")
    rows = torch.cat([nearest, bilinear, outputs[:count], pairs["target"][:count]])
    return save_grid(rows, path, nrow=count, scale=3)


def table(results: dict[str, dict[str, float]]) -> str:
    """The scores as a Markdown table."""
    lines = [
        "| method | FD to test images | classifier accuracy | PSNR to truth (dB) | PSNR of 2x2 means to input (dB) |",
        "|---|---|---|---|---|",
    ]
    for name, row in results.items():
        fd = f"{row['fd']:.2f}" if "fd" in row else "n/a"
        accuracy = f"{row['accuracy']:.3f}" if "accuracy" in row else "n/a"
        lines.append(
            f"| {name} | {fd} | {accuracy} | {row['psnr']:.2f} | {row['input_psnr']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path("runs/fashion-sr-pairs"), help="pairs folder"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/fashion-sr"), help="run folder")
    parser.add_argument("--train-steps", type=int, default=2000, help="optimizer steps")
    parser.add_argument("--eval-images", type=int, default=1000, help="held-out pairs scored")
    parser.add_argument("--calls", type=int, default=10, help="network calls per sample")
    parser.add_argument("--sampler", default="dpm++2m-sde", help="sampler name")
    parser.add_argument("--guidance-scale", type=float, default=None, help="guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples' noise")
    parser.add_argument(
        "--figure", type=Path, default=Path("super-resolution.png"), help="comparison figure"
    )
    parser.add_argument("--results", type=Path, default=None, help="write the scores as JSON")
    parser.add_argument(
        "--tiny",
        action="store_true",
        default=bool(os.environ.get("DIFFUSIONKIT_EXAMPLE_TINY")),
        help="every stage on a tiny model and a few images (also: DIFFUSIONKIT_EXAMPLE_TINY=1)",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.train_steps, args.eval_images, args.calls = 2, 8, 3
    prepare(
        args.data,
        train_images=64 if args.tiny else 60_000,
        test_images=32 if args.tiny else 10_000,
    )
    finished = (args.out / "config.json").is_file()
    if not finished or _trained_steps(args.out) < args.train_steps:
        train(args.data, args.out, steps=args.train_steps, tiny=args.tiny)
    model = DenoiseDiffusion.from_pretrained(args.out)
    pairs = held_out(args.data, args.eval_images)
    started = time.perf_counter()
    outputs = super_resolve(
        model,
        pairs["cond"],
        calls=args.calls,
        sampler=args.sampler,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )
    seconds = time.perf_counter() - started
    name = f"diffusionkit, {args.calls} calls of {args.sampler}"
    if args.guidance_scale is not None:
        name += f", guidance {args.guidance_scale:g}"
    results = score({name: outputs, **baselines(pairs)}, pairs)
    print(f"{len(outputs)} held-out images super-resolved in {seconds:.0f} s")
    print(table(results))
    if scorer() is None:
        print("(FD and accuracy need the benchmark's classifier: run from a diffusionkit checkout)")
    print(f"wrote {figure(args.figure, pairs, outputs, count=min(12, len(outputs)))}")
    if args.results is not None:
        atomic_write_text(args.results, json.dumps(results, indent=2) + "\n")
    return results


def _trained_steps(out: Path) -> int:
    from diffusionkit.training import list_checkpoints

    saved = list_checkpoints(out / "checkpoints")
    return int(saved[-1].name.split("-")[-1]) if saved else 0


if __name__ == "__main__":
    main()
