"""diffusionkit: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in PyTorch.

Conventions used throughout the library: timesteps ``t`` are 0-based integers (``t = 0`` is
the first noising step, step 1 in the paper; ``t = T - 1`` the last), and images live in
``[-1, 1]``.

Quick start::

    import torch
    from diffusionkit import DenoiseDiffusion, UNet

    model = DenoiseDiffusion(UNet(in_channels=1, dim=32, dim_mults=(1, 2), attns=(False, True)))
    loss = model.loss(torch.rand(8, 1, 16, 16) * 2 - 1)
    samples = model.reverse_sample((4, 1, 16, 16), generator=torch.Generator().manual_seed(0))
"""

# The checkpoint implementation sits above the core; importing it installs it behind the
# models' save_pretrained / from_pretrained / push_to_hub (see diffusionkit.persistence).
import diffusionkit.hub  # noqa: F401  (isort: the last import, on purpose)
from diffusionkit._version import __version__
from diffusionkit.denoiser import Denoiser
from diffusionkit.diffusion import BoundTerms, DenoiseDiffusion, Prediction, SampleTrajectory
from diffusionkit.networks import UNet
from diffusionkit.samplers import (
    DDIMSampler,
    DDPMSampler,
    PosteriorMeanSampler,
    Sampler,
    Variance,
    get_sampler,
)
from diffusionkit.samplers.dpm_solver import (
    DPMSolverPlusPlus2M,
    DPMSolverPlusPlus2MSDE,
    DPMSolverPlusPlus3M,
)
from diffusionkit.samplers.karras import EulerAncestralSampler, EulerSampler, HeunSampler
from diffusionkit.samplers.unipc import UniPCSampler
from diffusionkit.schedules import (
    CosineSchedule,
    LinearSchedule,
    NoiseSchedule,
    RespacedSchedule,
    SigmoidSchedule,
    ZeroTerminalSNRSchedule,
    rescale_zero_terminal_snr,
)
from diffusionkit.spacing import Spacing
from diffusionkit.thresholding import ClipX0, DynamicThreshold, X0Processing
from diffusionkit.weighting import LossWeighting, MinSNRWeighting

__all__ = [
    "BoundTerms",
    "ClipX0",
    "CosineSchedule",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPlusPlus2M",
    "DPMSolverPlusPlus2MSDE",
    "DPMSolverPlusPlus3M",
    "DenoiseDiffusion",
    "Denoiser",
    "DynamicThreshold",
    "EulerAncestralSampler",
    "EulerSampler",
    "HeunSampler",
    "LinearSchedule",
    "LossWeighting",
    "MinSNRWeighting",
    "NoiseSchedule",
    "PosteriorMeanSampler",
    "Prediction",
    "RespacedSchedule",
    "SampleTrajectory",
    "Sampler",
    "SigmoidSchedule",
    "Spacing",
    "UNet",
    "UniPCSampler",
    "Variance",
    "X0Processing",
    "ZeroTerminalSNRSchedule",
    "__version__",
    "get_sampler",
    "rescale_zero_terminal_snr",
]
