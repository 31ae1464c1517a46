"""Train a DDPM on scikit-learn's handwritten digits with the Python API.

The same run as ``diffusionkit train --data digits --out runs/digits``: a 0.28M-parameter
U-Net on the 1,438 training digits padded to 16x16, cosine schedule with T = 250, 2,500 steps
of 64 images, AdamW at 2e-3 after a 100-step warm-up, an EMA of the weights (decay 0.999), a sample
grid every 500 steps. It writes checkpoints, ``samples.png``, ``denoise.gif`` and the model
(``DenoiseDiffusion.from_pretrained(OUT)``) into the run folder.

Expected runtime: about 6 minutes on a 2-core CPU (no GPU, no download); ``--tiny`` trains a
tiny model for a few steps (seconds), as the smoke test does.

    python examples/train_digits.py [--out runs/digits-py] [--steps N] [--tiny]
"""

import argparse
import os

import torch

from diffusionkit import ClipX0, CosineSchedule, DenoiseDiffusion, UNet
from diffusionkit.training import Trainer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/digits-py", help="run folder")
parser.add_argument("--steps", type=int, default=2500, help="optimizer steps")
parser.add_argument(
    "--tiny",
    action="store_true",
    default=bool(os.environ.get("DIFFUSIONKIT_EXAMPLE_TINY")),
    help="a few steps of a tiny model (also: DIFFUSIONKIT_EXAMPLE_TINY=1)",
)
args = parser.parse_args()

torch.manual_seed(0)  # the network's initial weights
if args.tiny:
    net = UNet(in_channels=1, dim=8, dim_mults=(1, 2), attns=(False, False), groups=4)
    settings = dict(steps=3, batch_size=8, sample_every=0, sample_count=4, checkpoint_every=2)
    timesteps = 20
else:
    # three levels (16x16, 8x8, 4x4), self-attention at the lowest one
    net = UNet(in_channels=1, dim=16, dim_mults=(1, 2, 2), attns=(False, False, True),
               n_blocks=1, groups=8)  # fmt: skip
    settings = dict(steps=args.steps, batch_size=64, sample_every=500, checkpoint_every=500)
    timesteps = 250
# clip the x0 estimate while sampling: the cosine schedule's last step would otherwise
# amplify the network's error 32-fold and leave some samples blank
model = DenoiseDiffusion(net, CosineSchedule(timesteps=timesteps), x0_processing=ClipX0())
trainer = Trainer(
    model,
    "digits",  # scikit-learn's digits, padded to 16x16 and scaled to [-1, 1]
    lr=2e-3,
    warmup_steps=100,
    ema_decay=0.999,
    out_dir=args.out,
    **settings,
)
result = trainer.train()
print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min, loss {result.loss:.4f}")
print(f"samples: {result.samples}, denoising GIF: {result.gif}, model: {args.out}")
