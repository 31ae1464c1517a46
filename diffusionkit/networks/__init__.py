"""Denoising networks, and the table of them by class name used by configs."""

from torch import nn

from diffusionkit.networks.unet import UNet
from diffusionkit.registry import Registry

#: networks by class name; register your own ``Denoiser`` to save and load it with its config
NETWORKS: Registry[nn.Module] = Registry("network")
NETWORKS.register(UNet)

__all__ = ["NETWORKS", "UNet"]
