"""Draw the documentation's figures of a real training run: progress grids, samples, a GIF.

Takes a finished run folder of the main job and writes into ``docs/assets/``::

    diffusionkit train --data digits --out runs/digits          # the README's main job
    python docs/scripts/make_training_figures.py --run runs/digits

Figures:

* ``training_progress.png``: the run's own sample grids (``samples/step-*.png`` and the final
  ``samples.png``, drawn by the trainer with the EMA weights from the same seeds every time)
  at a few steps, cropped to their first 4x4 images, so the same noise can be followed as the
  model learns;
* ``training_loss.png``: the loss from ``metrics.jsonl``, log scale;
* ``samples.png``: 64 samples of the finished model (EMA weights), the full chain;
* ``denoise.gif``: 16 samples denoising over the full chain, 20 frames.

Deterministic: fixed seeds, and PNG metadata without dates. Runs in about a minute on a
2-core CPU for the main job's model (250 steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from diffusionkit import DenoiseDiffusion
from diffusionkit.utils import save_gif, save_grid, trajectory_frames

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PNG_METADATA = {"Software": None}


def crop_grid(path: Path, nrow: int, keep: int, size: int, padding: int = 2) -> np.ndarray:
    """The first ``keep`` x ``keep`` images of a square grid PNG written by ``save_grid``.

    ``save_grid`` lays out ``nrow`` images of ``size`` pixels with ``padding`` before each and
    one at the end, then scales everything by an integer factor, found here from the width.
    """
    grid = Image.open(path).convert("L")
    scale, rest = divmod(grid.width, nrow * (size + padding) + padding)
    if rest or scale < 1:
        raise ValueError(f"{path}: {grid.width} px is not a grid of {nrow} x {size} px images")
    side = scale * (keep * (size + padding) + padding)
    return np.asarray(grid.crop((0, 0, side, side)))


def plot_progress(
    run: Path, out: Path, size: int, picks: int = 5, nrow: int = 8, keep: int = 4
) -> None:
    """The trainer's grids at ``picks`` steps, evenly spread over the run, then the final one."""
    grids = sorted((run / "samples").glob("step-*.png"))
    if not grids:
        raise SystemExit(f"{run}/samples has no step-*.png grids: is it a finished run folder?")
    chosen = [grids[round(i)] for i in np.linspace(0, len(grids) - 1, min(picks, len(grids)))]
    panels = [(f"step {int(p.stem.split('-')[1]):,}", p) for p in dict.fromkeys(chosen)]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    panels.append((f"step {last:,} (final)", run / "samples.png"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.3), dpi=100)
    for ax, (title, path) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(crop_grid(path, nrow, keep, size), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout(pad=0.3)
    fig.subplots_adjust(top=0.88)  # room for the titles above the square panels
    fig.savefig(out, metadata=PNG_METADATA)
    plt.close(fig)


def plot_loss(run: Path, out: Path) -> None:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    loss = [r["loss"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    ax.plot(steps, loss, lw=1)
    ax.set(xlabel="training step", ylabel="loss (mean over 10 steps)", yscale="log")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out, metadata=PNG_METADATA)
    plt.close(fig)


def draw_samples(model: DenoiseDiffusion, shape: tuple[int, ...], out: Path, seed: int) -> None:
    samples = model.reverse_sample(shape, generator=torch.Generator().manual_seed(seed), clip=True)
    save_grid(samples, out, nrow=8, scale=3)


def draw_gif(model: DenoiseDiffusion, shape: tuple[int, ...], out: Path, seed: int) -> None:
    chain = model.reverse_sample(
        shape, generator=torch.Generator().manual_seed(seed), return_intermediates=True, clip=True
    )
    frames = trajectory_frames(chain, frames=20, nrow=4)  # noisy frames compress badly: keep few
    save_gif(frames, out, duration_ms=100, hold_last_ms=2000, scale=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/digits"), help="run folder")
    parser.add_argument("--out", type=Path, default=ASSETS, help="output folder")
    parser.add_argument("--image-size", type=int, default=16, help="the run's image size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    plot_progress(args.run, args.out / "training_progress.png", args.image_size)
    plot_loss(args.run, args.out / "training_loss.png")
    model = DenoiseDiffusion.from_pretrained(args.run)  # EMA weights
    channels, size = model.net.in_channels, args.image_size
    draw_samples(model, (64, channels, size, size), args.out / "samples.png", args.seed)
    draw_gif(model, (16, channels, size, size), args.out / "denoise.gif", args.seed)
    for name in ("training_progress.png", "training_loss.png", "samples.png", "denoise.gif"):
        path = args.out / name
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
