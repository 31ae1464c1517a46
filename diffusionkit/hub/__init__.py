"""Checkpoints: safetensors + config.json, the Hugging Face Hub, and the diffusers format.

This package sits above the core: it imports the models, schedules and samplers, and the core
never imports it. ``DenoiseDiffusion`` and ``UNet`` get ``save_pretrained``,
``from_pretrained``, ``push_to_hub``, ``from_diffusers`` and ``save_diffusers`` from
:class:`~diffusionkit.persistence.PretrainedMixin`, which calls the implementation installed
here (:class:`~diffusionkit.hub.io.HubCheckpointIO`). Modules:

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
from diffusionkit.hub.io import HubCheckpointIO
from diffusionkit.persistence import PretrainedMixin, set_checkpoint_io

set_checkpoint_io(HubCheckpointIO())

__all__ = ["CheckpointError", "CheckpointNotFoundError", "HubCheckpointIO", "PretrainedMixin"]
