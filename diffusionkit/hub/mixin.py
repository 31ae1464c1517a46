"""Save, load and share models (being written: see issue 3)."""

from __future__ import annotations


class PretrainedMixin:
    """Adds ``save_pretrained``, ``from_pretrained`` and ``push_to_hub`` to a model class."""
