"""Quickstart: train a tiny DDPM on random data for a few steps, then sample 4 images.

Runs in a few seconds on a CPU: ``python examples/quickstart.py``.
"""

import torch

from diffusionkit import DenoiseDiffusion, LinearSchedule, UNet

net = UNet(in_channels=1, dim=16, dim_mults=(1, 2), attns=(False, True), groups=8)
model = DenoiseDiffusion(net, LinearSchedule(timesteps=100))
data = torch.rand(64, 1, 16, 16) * 2 - 1  # images live in [-1, 1]
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for _ in range(20):  # a real run trains for thousands of steps
    loss = model.loss(data[torch.randint(0, 64, (16,))])
    opt.zero_grad()
    loss.backward()
    opt.step()
samples = model.reverse_sample(
    (4, 1, 16, 16), generator=torch.Generator().manual_seed(0), clip=True
)
print(
    f"loss {loss.item():.3f}; samples {tuple(samples.shape)} in [{samples.min():.2f}, {samples.max():.2f}]"
)
