"""The Hub's implementation of :class:`~diffusionkit.persistence.CheckpointIO`.

``diffusionkit/hub/__init__.py`` installs it with
:func:`~diffusionkit.persistence.set_checkpoint_io`. Its methods import
:mod:`~diffusionkit.hub.pretrained` (and with it ``huggingface_hub``) on first use:
``import diffusionkit`` must not import ``huggingface_hub``, which reads ``HF_ENDPOINT`` once,
when it is first imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from diffusionkit.persistence import EmaWeights, StrPath

__all__ = ["HubCheckpointIO"]


class HubCheckpointIO:
    """Checkpoints as diffusionkit folders or diffusers layouts, locally or on the Hub."""

    def save_pretrained(
        self, model: nn.Module, directory: StrPath, *, ema: EmaWeights, sample_grid: StrPath | None
    ) -> Path:
        from diffusionkit.hub import pretrained

        return pretrained.save_pretrained(model, directory, ema=ema, sample_grid=sample_grid)

    def load_pretrained(
        self, cls: type, path_or_repo_id: StrPath, *, diffusers_only: bool, **options: Any
    ) -> nn.Module:
        from diffusionkit.hub import pretrained

        return pretrained.load_pretrained(
            cls, path_or_repo_id, diffusers_only=diffusers_only, **options
        )

    def push_to_hub(self, model: nn.Module, repo_id: str, **options: Any) -> Any:
        from diffusionkit.hub import pretrained

        return pretrained.push_to_hub(model, repo_id, **options)

    def save_diffusers(
        self,
        model: nn.Module,
        directory: StrPath,
        *,
        sample_size: int | tuple[int, int],
        ema: EmaWeights,
    ) -> Path:
        from diffusionkit.hub import pretrained

        return pretrained.save_diffusers(model, directory, sample_size=sample_size, ema=ema)
