"""Sample a trained model: a grid of images and GIFs of the denoising chain.

Loads a run folder (``diffusionkit train --out runs/digits``, or ``examples/train_digits.py``)
or a Hub repo, draws samples with all of the model's steps, and writes:

* ``samples.png``: the samples as a grid;
* ``denoise.gif``: ``x_t`` going from pure noise to the samples;
* ``denoise_x0.gif``: the model's running estimate of the clean image at each step.

Expected runtime: about 30 seconds on a 2-core CPU for 64 digits (T = 250). ``--tiny`` draws
4 samples with 5 steps, as the smoke test does.

    python examples/sample_grid_and_gif.py [--model runs/digits] [-n 64] [--image-size 16]
"""

import argparse
import os

import torch

from diffusionkit import DenoiseDiffusion
from diffusionkit.utils import save_gif, save_grid, trajectory_frames

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="runs/digits", help="run folder or Hub repo id")
parser.add_argument("-n", type=int, default=64, help="number of samples")
parser.add_argument("--image-size", type=int, default=16, help="size the model was trained at")
parser.add_argument("--steps", type=int, default=None, help="reverse steps (default: all T)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default=".", help="folder for the PNG and GIFs")
parser.add_argument(
    "--tiny",
    action="store_true",
    default=bool(os.environ.get("DIFFUSIONKIT_EXAMPLE_TINY")),
    help="4 samples, 5 steps (also: DIFFUSIONKIT_EXAMPLE_TINY=1)",
)
args = parser.parse_args()
n, steps = (4, 5) if args.tiny else (args.n, args.steps)

model = DenoiseDiffusion.from_pretrained(args.model)  # EMA weights when the model has them
channels = model.net.in_channels
chain = model.reverse_sample(
    (n, channels, args.image_size, args.image_size),
    generator=torch.Generator().manual_seed(args.seed),
    steps=steps,
    return_intermediates=True,  # keeps x_t and the x0 estimate of every step (on the CPU)
    clip=True,
)
nrow = max(1, round(n**0.5))
scale = max(1, 64 // args.image_size)  # bigger pixels for small images
os.makedirs(args.out, exist_ok=True)
grid = save_grid(chain.samples, os.path.join(args.out, "samples.png"), nrow=nrow, scale=scale)
gif = save_gif(trajectory_frames(chain, nrow=nrow), os.path.join(args.out, "denoise.gif"),
               scale=scale)  # fmt: skip
gif_x0 = save_gif(
    trajectory_frames(chain, nrow=nrow, predicted_x0=True),
    os.path.join(args.out, "denoise_x0.gif"),
    scale=scale,
)
print(f"wrote {grid}, {gif} and {gif_x0} ({chain.timesteps.numel()} steps)")
