"""Lazy import of Pillow, the optional dependency that writes PNG and GIF files."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = 'pip install "diffusionkit[data]"'


def require_pillow(purpose: str) -> ModuleType:
    """Import ``PIL.Image`` or raise an ImportError naming the install command.

    Args:
        purpose: what needs Pillow, e.g. ``"save_grid"``.
    """
    try:
        return importlib.import_module("PIL.Image")
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs Pillow, which is not installed; install it with {INSTALL_HINT}"
        ) from error
