"""Load an original DDPM checkpoint (diffusers layout) and sample from it with diffusionkit.

``DenoiseDiffusion.from_pretrained`` reads a diffusers ``DDPMPipeline`` folder or Hub repo
(``model_index.json``, ``unet/``, ``scheduler/``) such as ``google/ddpm-cifar10-32``, the
CIFAR-10 model of Ho et al. 2020: it builds the equivalent diffusionkit ``UNet`` (35.7M
parameters), maps the weights, and turns the scheduler config into the equivalent schedule and
sampler (for this checkpoint: linear betas, ``variance_type="fixed_large"``,
``clip_sample=True``). diffusers itself is not needed.

Expected runtime on a 2-core CPU: the download of 143 MB once, then about 1 minute for 8
samples in 100 steps (each step is one U-Net call on the batch, 12.4 GFLOP per image).
The paper's 1,000 steps take ten times as long and look a little better.

Usage::

    python examples/load_diffusers_checkpoint.py                    # google/ddpm-cifar10-32
    python examples/load_diffusers_checkpoint.py --steps 1000 -n 16 --out cifar.png
    python examples/load_diffusers_checkpoint.py --model path/to/saved/pipeline --image-size 32

Other published DDPM checkpoints in the same layout, e.g. ``google/ddpm-celebahq-256`` or
``google/ddpm-church-256`` (``--image-size 256``), load the same way but take far longer to
sample on a CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffusionkit import DenoiseDiffusion
from diffusionkit.utils import save_grid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="google/ddpm-cifar10-32", help="repo id or folder")
    parser.add_argument("--image-size", type=int, default=32, help="the checkpoint's resolution")
    parser.add_argument("-n", type=int, default=8, help="number of samples")
    parser.add_argument("--steps", type=int, default=100, help="sampling steps (1..1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("ddpm_samples.png"), help="PNG grid")
    args = parser.parse_args(argv)

    model = DenoiseDiffusion.from_pretrained(args.model)
    params = sum(p.numel() for p in model.parameters())
    print(f"loaded {args.model}: {params:,} parameters")
    print(f"  schedule {model.schedule!r}")
    print(f"  sampler  {model.sampler!r}, prediction {model.prediction.value!r}")

    start = time.perf_counter()
    samples = model.reverse_sample(
        (args.n, model.net.in_channels, args.image_size, args.image_size),
        generator=torch.Generator().manual_seed(args.seed),
        steps=args.steps,
        clip=True,
    )
    print(f"sampled {args.n} images in {args.steps} steps, {time.perf_counter() - start:.0f} s")
    save_grid(samples, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
