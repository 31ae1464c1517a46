"""Quickstart: train a tiny DDPM on real handwritten digits for a few steps, then sample.

The README's quickstart as a script. Expected runtime: about 15 seconds on a 2-core CPU
(``python examples/quickstart.py``). Needs the ``data`` extra (scikit-learn) for the digits.
After 20 training steps the samples are still noise; see ``examples/train_digits.py`` and the
"Your first model" guide for a model that draws digits.
"""

import torch

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet
from diffusionkit.data import load_dataset

images = load_dataset("digits").images  # (1438, 1, 16, 16), already in [-1, 1]
net = UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8)
model = DenoiseDiffusion(net, LinearSchedule(timesteps=100))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
gen = torch.Generator().manual_seed(0)
for step in range(20):  # a real run trains for thousands of steps
    loss = model.loss(images[torch.randint(0, len(images), (16,), generator=gen)], generator=gen)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 5 == 0:
        print(f"step {step:2d}  loss {loss.item():.3f}")
samples = model.reverse_sample((8, 1, 16, 16), generator=gen, steps=50, clip=True)
print(
    f"loss {loss.item():.3f}; samples {tuple(samples.shape)} "
    f"in [{samples.min():.2f}, {samples.max():.2f}]"
)
