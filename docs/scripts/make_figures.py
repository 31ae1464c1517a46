"""Draw the documentation's figures that need no trained model: schedule plots and a noising strip.

Deterministic (fixed seeds; the PNG metadata carries no date), so re-running it reproduces
the committed files. Runs in about 10 seconds on a CPU::

    python docs/scripts/make_figures.py            # writes docs/assets/*.png

Figures:

* ``schedules.png``: ``alphas_cumprod`` and the signal-to-noise ratio (log scale) of the
  linear (Ho et al. 2020) and cosine (Nichol & Dhariwal 2021) schedules, ``T = 1000``.
* ``forward_noising.png``: real scikit-learn digits (via :mod:`diffusionkit.data`) noised in
  closed form, ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, by both schedules.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from diffusionkit import CosineSchedule, DenoiseDiffusion, LinearSchedule, NoiseSchedule
from diffusionkit.data import DigitsDataset

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Fixed metadata so the PNG bytes depend on the pixels only (matplotlib stamps its version).
PNG_METADATA = {"Software": None}
COLORS = {"linear": "#1f77b4", "cosine": "#d62728"}


def schedules() -> dict[str, NoiseSchedule]:
    return {"linear": LinearSchedule(1000), "cosine": CosineSchedule(1000)}


def plot_schedules(out: Path) -> None:
    """``alphas_cumprod`` (left) and SNR on a log scale (right) against ``t``."""
    fig, (ax_abar, ax_snr) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    for name, schedule in schedules().items():
        t = torch.arange(schedule.timesteps)
        ax_abar.plot(t, schedule.alphas_cumprod, label=name, color=COLORS[name])
        ax_snr.plot(t, schedule.snr, label=name, color=COLORS[name])
    ax_abar.set(
        title=r"$\bar\alpha_t$: share of signal variance",
        xlabel="t (0-based)",
        ylim=(-0.02, 1.02),
    )
    ax_snr.set(
        title=r"SNR $= \bar\alpha_t / (1 - \bar\alpha_t)$",
        xlabel="t (0-based)",
        yscale="log",
    )
    for ax in (ax_abar, ax_snr):
        ax.set_xlim(0, 999)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out, metadata=PNG_METADATA)
    plt.close(fig)


def plot_forward_noising(out: Path, seed: int = 0) -> None:
    """A digit noised to increasing ``t`` with the same noise: one row per schedule."""
    data = DigitsDataset(16, split="all")
    # one fixed example of the digit 3: the first of its class in scikit-learn's order
    picks = [int((data.labels == 3).nonzero()[0])]
    x0 = data.images[picks]  # (1, 1, 16, 16) in [-1, 1], as the default training data
    steps = [0, 50, 100, 200, 300, 500, 700, 999]
    rows = []
    for name, schedule in schedules().items():
        model = DenoiseDiffusion(torch.nn.Identity(), schedule)
        # the same noise for both schedules, so the rows differ by the schedule alone
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        for i in range(len(picks)):
            strip = [x0[i, 0]]
            for t in steps:
                x_t, _ = model.forward_sample(x0[i : i + 1], t, noise[i : i + 1])
                strip.append(x_t[0, 0])
            rows.append((name, strip))

    fig, axes = plt.subplots(
        len(rows), len(steps) + 1, figsize=(1.0 * (len(steps) + 1), 1.1 * len(rows)), dpi=90
    )
    for r, (name, strip) in enumerate(rows):
        for c, image in enumerate(strip):
            ax = axes[r, c]
            # the data range [-1, 1] maps to black..white; x_t beyond it saturates
            ax.imshow(image.numpy(), cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("$x_0$" if c == 0 else f"t = {steps[c - 1]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(out, metadata=PNG_METADATA)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="output folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # nothing should use the global RNG; this only guards the figures
    plot_schedules(args.out / "schedules.png")
    plot_forward_noising(args.out / "forward_noising.png")
    for path in sorted(args.out.glob("*.png")):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
