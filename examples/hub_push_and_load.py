"""Share a model on the Hugging Face Hub and load it back, sampling identically.

Saves a model (``config.json`` + ``model.safetensors`` + a model card), pushes it to a Hub repo,
downloads it again with ``DenoiseDiffusion.from_pretrained`` and checks that the loaded model
draws bit-identical samples from the same seed.

Expected runtime: about 1 minute on an idle 2-core CPU (measured: 71 s of CPU time), most of
it training a small model for 300 steps when no ``--model`` is given, plus the upload of
about 1 MB.

Usage::

    hf auth login        # or: export HF_TOKEN=hf_...  (a token with write access)
    python examples/hub_push_and_load.py --repo YOUR_NAME/diffusionkit-digits

    # a model you trained before (a folder written by save_pretrained, or a Hub repo id)
    python examples/hub_push_and_load.py --repo YOUR_NAME/digits --model my-model-folder

    # no network: save to and load from a local folder only
    python examples/hub_push_and_load.py --local

The Hub endpoint is huggingface_hub's: set ``HF_ENDPOINT`` to use another Hub-compatible
server (the test suite points it at a local one).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.data import load_dataset


def train_small_model(steps: int, seed: int = 0) -> DenoiseDiffusion:
    """A 0.25M-parameter U-Net trained on the digits for ``steps`` steps (batch 32)."""
    images = load_dataset("digits").images  # (1438, 1, 16, 16) in [-1, 1]
    net = UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8)
    model = DenoiseDiffusion(net, LinearSchedule(timesteps=200))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = images[torch.randint(0, len(images), (32,), generator=gen)]
        loss = model.loss(batch, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"train step {step:4d}  loss {loss.item():.4f}")
    return model


def sample(model: DenoiseDiffusion, n: int, size: int, steps: int, seed: int) -> torch.Tensor:
    """``n`` samples ``(n, C, size, size)`` in [-1, 1] from a fixed seed."""
    return model.reverse_sample(
        (n, model.net.in_channels, size, size),
        generator=torch.Generator().manual_seed(seed),
        steps=steps,
        clip=True,
        progress=False,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--repo", help="Hub repo id to push to, e.g. YOUR_NAME/diffusionkit-digits")
    where.add_argument(
        "--local", action="store_true", help="no Hub: save to and load from a local folder"
    )
    parser.add_argument("--model", help="model to share (folder or repo id); default: train one")
    parser.add_argument("--train-steps", type=int, default=300, help="steps if training one")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--out", type=Path, help="folder for save_pretrained (default: temp)")
    parser.add_argument("--image-size", type=int, default=16, help="the model's image size")
    parser.add_argument("-n", type=int, default=8, help="samples to compare")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.model:
        model = DenoiseDiffusion.from_pretrained(args.model)
    else:
        model = train_small_model(args.train_steps, seed=args.seed)
    before = sample(model, args.n, args.image_size, args.steps, args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp) / "model"
        model.save_pretrained(folder)
        print(f"saved {sorted(p.name for p in folder.iterdir())} to {folder}")
        if args.local:
            loaded = DenoiseDiffusion.from_pretrained(folder)
        else:
            commit = model.push_to_hub(args.repo, private=args.private or None)
            print(f"pushed to {args.repo} (commit {commit.oid[:12]})")
            # force_download: fetch from the Hub, not from a copy cached by an earlier run
            loaded = DenoiseDiffusion.from_pretrained(args.repo, force_download=True)
            print(f"loaded {args.repo} back from the Hub")

    after = sample(loaded, args.n, args.image_size, args.steps, args.seed)
    if not torch.equal(before, after):
        raise SystemExit("the loaded model samples differently from the saved one")
    print(f"{args.n} samples from seed {args.seed}: identical before saving and after loading")


if __name__ == "__main__":
    main()
