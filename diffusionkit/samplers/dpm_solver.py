"""(being written: see issue 13)"""

from __future__ import annotations

from diffusionkit.samplers.base import Sampler

__all__ = ["SOLVERS"]

#: the classes this module registers in :data:`~diffusionkit.samplers.SAMPLERS`
SOLVERS: tuple[type[Sampler], ...] = ()
