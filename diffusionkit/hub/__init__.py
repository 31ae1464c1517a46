"""Checkpoints: safetensors + config.json, the Hugging Face Hub, and the diffusers format."""

from diffusionkit.hub.mixin import PretrainedMixin

__all__ = ["PretrainedMixin"]
