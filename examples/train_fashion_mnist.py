"""Train a DDPM on Fashion-MNIST (28x28 clothing images) with the Python API.

The data come from ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package
``dataset-fashion-mnist``) or are downloaded once, with checksums, into the cache. A 3-level
U-Net (28 -> 14 -> 7 pixels, 0.63M parameters) trains on the 60,000 training images.

Expected runtime: the default 2,000 steps of 64 images take about 35 minutes of CPU time
(measured 0.94 s per step on one core of the development machine), so roughly 20-25 minutes
on a quiet 2-core CPU, plus about 1.5 minutes of CPU time per sample grid (3 grids); minutes
on a GPU.
``--tiny`` trains a tiny model for a few steps (seconds), as the smoke test does.

    python examples/train_fashion_mnist.py [--out runs/fashion-mnist] [--steps N] [--tiny]
"""

import argparse
import os

import torch

from diffusionkit import ClipX0, CosineSchedule, DenoiseDiffusion, UNet
from diffusionkit.data import load_dataset
from diffusionkit.training import Trainer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/fashion-mnist", help="run folder")
parser.add_argument("--steps", type=int, default=2000, help="optimizer steps")
parser.add_argument(
    "--tiny",
    action="store_true",
    default=bool(os.environ.get("DIFFUSIONKIT_EXAMPLE_TINY")),
    help="a few steps of a tiny model (also: DIFFUSIONKIT_EXAMPLE_TINY=1)",
)
args = parser.parse_args()

data = load_dataset("fashion-mnist", image_size=28, channels=1)  # items in [-1, 1]
torch.manual_seed(0)
if args.tiny:
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, False), groups=4)
    settings = dict(steps=2, batch_size=8, sample_every=0, sample_count=4, checkpoint_every=0)
    timesteps = 20
else:
    net = UNet(in_channels=1, dim=24, dim_mults=(1, 2, 2), attns=(False, False, True),
               n_blocks=1, groups=8)  # fmt: skip
    settings = dict(steps=args.steps, batch_size=64, sample_every=1000, checkpoint_every=500)
    timesteps = 250
model = DenoiseDiffusion(net, CosineSchedule(timesteps=timesteps), x0_processing=ClipX0())
trainer = Trainer(
    model, data, lr=1e-3, warmup_steps=200, ema_decay=0.999, out_dir=args.out, **settings
)
result = trainer.train()
print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min, loss {result.loss:.4f}")
print(f"samples: {result.samples}, denoising GIF: {result.gif}, model: {args.out}")
