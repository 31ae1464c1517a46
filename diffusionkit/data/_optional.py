"""Lazy imports of the optional dependencies of :mod:`diffusionkit.data`.

Pillow and scikit-learn are only needed by some datasets, so they are imported inside the
functions that use them; a missing package then fails where it is needed, with the command
that installs it, instead of breaking ``import diffusionkit``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = 'pip install "diffusionkit[data]"'


def require(module: str, package: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says how to install it.

    Args:
        module: importable name, e.g. ``"PIL.Image"``.
        package: the name on PyPI, e.g. ``"Pillow"``.
        purpose: what needs it, completing "... needs {package}", e.g. ``"reading image folders"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs {package}, which is not installed; install it with {INSTALL_HINT}"
        ) from error
