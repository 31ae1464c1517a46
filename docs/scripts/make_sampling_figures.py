"""Draw the figures of the sampling, inpainting and conditioning guides from a real model.

Trains (or reuses) a small class-conditional model on scikit-learn's digits, then writes into
``docs/assets/``::

    python docs/scripts/make_sampling_figures.py --run runs/digits-cond

Figures:

* ``sampling_steps.png``: the same 16 seeds sampled by DDPM with 1,000 and 50 steps and by
  DDIM with 50 and 10 steps;
* ``inpainting.png``: held-out digits, the known region, and inpaintings without and with
  RePaint resampling;
* ``img2img.png``: a crude input refined by SDEdit from three start steps;
* ``guidance.png``: one row per class, without guidance (scale 1) and with scale 3.

The model: ``UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8,
num_classes=10)``, linear schedule with ``T = 1000``, 4,000 steps of batch 128 with 10% label
dropout (about 25 minutes on one CPU core). Deterministic: fixed seeds, PNG metadata
without dates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from diffusionkit import DDIMSampler, DDPMSampler, DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.data import DigitsDataset
from diffusionkit.utils import make_grid

ASSETS = Path(__file__).resolve().parents[1] / "assets"
OUT = ASSETS  # --out changes it
PNG_METADATA = {"Software": None}


def seeds(*values: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(v) for v in values]


def train(run: Path, steps: int) -> DenoiseDiffusion:
    from diffusionkit.training import Trainer

    torch.manual_seed(0)
    net = UNet(
        in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8, num_classes=10
    )
    model = DenoiseDiffusion(net, LinearSchedule(1000))
    Trainer(
        model,
        "digits",
        batch_size=128,
        lr=2e-3,
        steps=steps,
        out_dir=run,
        sample_every=1000,
        sample_steps=50,
        label_dropout=0.1,
    ).train()
    return DenoiseDiffusion.from_pretrained(run)


def show(ax: plt.Axes, images: Tensor, title: str, nrow: int) -> None:
    grid = make_grid(images.clamp(-1, 1), nrow, padding=1, pad_value=1.0)  # (C, H, W)
    ax.imshow(((grid[0] + 1) / 2).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def save(fig: plt.Figure, name: str) -> None:
    path = OUT / name
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata=PNG_METADATA)
    plt.close(fig)
    print(f"wrote {path}")


def sampling_steps(model: DenoiseDiffusion) -> None:
    shape = (16, 1, 16, 16)
    runs = [
        ("DDPM, 1,000 steps", DDPMSampler(), None),
        ("DDPM, 50 steps", DDPMSampler(), 50),
        ("DDIM, 50 steps", DDIMSampler(), 50),
        ("DDIM, 10 steps", DDIMSampler(), 10),
    ]
    fig, axes = plt.subplots(1, len(runs), figsize=(2.2 * len(runs), 2.6))
    for ax, (title, sampler, steps) in zip(axes, runs, strict=True):
        x = model.reverse_sample(
            shape, generator=seeds(*range(16)), sampler=sampler, steps=steps, clip=True
        )
        show(ax, x, title, nrow=4)
    save(fig, "sampling_steps.png")


def held_out_digits(count: int) -> Tensor:
    data = DigitsDataset(image_size=16)
    picks = range(len(data) - count, len(data))  # the last digits of the set
    return torch.stack([data[i][0] for i in picks])


def inpainting(model: DenoiseDiffusion) -> None:
    x_known = held_out_digits(8)
    mask = torch.ones(1, 1, 16, 16)
    mask[..., :, 8:] = 0  # the right half is to be filled in
    plain = model.reverse_sample(
        x_known=x_known, mask=mask, steps=250, generator=seeds(*range(8)), clip=True
    )
    resampled = model.reverse_sample(
        x_known=x_known,
        mask=mask,
        steps=250,
        resample_jumps=4,
        generator=seeds(*range(8)),
        clip=True,
    )
    shown_known = torch.where(mask.bool(), x_known, torch.zeros_like(x_known))
    rows = [
        ("held-out digits", x_known),
        ("known: left half", shown_known),
        ("inpainted", plain),
        ("inpainted, resample_jumps=4", resampled),
    ]
    fig, axes = plt.subplots(len(rows), 1, figsize=(6.5, 1.3 * len(rows)))
    for ax, (title, images) in zip(axes, rows, strict=True):
        show(ax, images, title, nrow=8)
    save(fig, "inpainting.png")


def crude_inputs() -> Tensor:
    """Hand-drawn blocky shapes: a ring (a zero) and a bar (a one), in [-1, 1]."""
    x = -torch.ones(2, 1, 16, 16)
    x[0, 0, 3:13, 4:12] = 1.0
    x[0, 0, 5:11, 6:10] = -1.0
    x[1, 0, 2:14, 7:10] = 1.0
    return x


def img2img(model: DenoiseDiffusion) -> None:
    x_init = crude_inputs().repeat_interleave(4, dim=0)  # 4 seeds per input
    rows = [("input", x_init)]
    for k in (200, 400, 600):
        out = model.reverse_sample(
            x_init=x_init, start_step=k, generator=seeds(*range(8)), clip=True
        )
        rows.append((f"start_step={k}", out))
    fig, axes = plt.subplots(len(rows), 1, figsize=(6.5, 1.3 * len(rows)))
    for ax, (title, images) in zip(axes, rows, strict=True):
        show(ax, images, title, nrow=8)
    save(fig, "img2img.png")


def guidance(model: DenoiseDiffusion) -> None:
    labels = torch.arange(10).repeat_interleave(6)
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 5.2))
    for ax, scale in zip(axes, (1.0, 3.0), strict=True):
        x = model.reverse_sample(
            (60, 1, 16, 16),
            labels=labels,
            guidance_scale=scale,
            sampler=DDIMSampler(),
            steps=50,
            generator=seeds(*range(60)),
            clip=True,
        )
        show(ax, x, f"guidance_scale={scale:g}", nrow=6)
    save(fig, "guidance.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/digits-cond"))
    parser.add_argument("--steps", type=int, default=4000, help="training steps if training")
    parser.add_argument("--out", type=Path, default=ASSETS, help="where to write the figures")
    args = parser.parse_args()
    global OUT
    OUT = args.out
    if (args.run / "config.json").exists():
        model = DenoiseDiffusion.from_pretrained(args.run)
    else:
        model = train(args.run, args.steps)
    OUT.mkdir(parents=True, exist_ok=True)
    sampling_steps(model)
    inpainting(model)
    img2img(model)
    guidance(model)


if __name__ == "__main__":
    main()
