"""Checkpoints: safetensors + config.json, the Hugging Face Hub, and the diffusers format.

``DenoiseDiffusion`` and ``UNet`` get ``save_pretrained``, ``from_pretrained``, ``push_to_hub``,
``from_diffusers`` and ``save_diffusers`` from :class:`PretrainedMixin`. Modules:

* :mod:`~diffusionkit.hub.checkpoint`: the diffusionkit format (``config.json`` schema);
* :mod:`~diffusionkit.hub.components`: components to and from ``{"class", "config"}``;
* :mod:`~diffusionkit.hub.weights`: safetensors I/O and strict loading;
* :mod:`~diffusionkit.hub.remote`: folders and Hub repos; :mod:`~diffusionkit.hub.integrity`:
  checksums; :mod:`~diffusionkit.hub.atomic`: crash-safe writes; :mod:`~diffusionkit.hub.card`:
  the model card;
* :mod:`~diffusionkit.hub.diffusers_unet`, :mod:`~diffusionkit.hub.diffusers_scheduler`,
  :mod:`~diffusionkit.hub.diffusers_pipeline`: diffusers' DDPM layout.
"""

from diffusionkit.hub.errors import CheckpointError, CheckpointNotFoundError
from diffusionkit.hub.mixin import PretrainedMixin

__all__ = ["CheckpointError", "CheckpointNotFoundError", "PretrainedMixin"]
