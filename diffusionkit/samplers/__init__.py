"""Samplers: solvers of the reverse process, each owning its loop over a chain.

* :mod:`~diffusionkit.samplers.base`: the contract (:class:`Sampler`);
* :mod:`~diffusionkit.samplers.ddpm`: the DDPM family, one memoryless step at a time
  (``"ddpm"``, ``"posterior-mean"``, ``"ddim"``);
* :mod:`~diffusionkit.samplers.dpm_solver`: DPM-Solver++ multistep (``"dpm++2m"``,
  ``"dpm++3m"``, ``"dpm++2m-sde"``);
* :mod:`~diffusionkit.samplers.unipc`: UniPC (``"unipc"``);
* :mod:`~diffusionkit.samplers.karras`: Euler, Euler ancestral and Heun in Karras et al.'s
  formulation (``"euler"``, ``"euler-ancestral"``, ``"heun"``).

Objects are the API; names (:data:`SAMPLERS`, :func:`get_sampler`) are for configs and the
command line.
"""

from __future__ import annotations

from typing import Any

from diffusionkit.registry import Registry
from diffusionkit.samplers import dpm_solver, karras, unipc
from diffusionkit.samplers.base import Sampler
from diffusionkit.samplers.ddpm import DDIMSampler, DDPMSampler, PosteriorMeanSampler, Variance

__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "PosteriorMeanSampler",
    "Sampler",
    "Variance",
    "get_sampler",
]

#: samplers by class name and short name (``"ddpm"``, ``"ddim"``, ``"dpm++2m"``, ...), for
#: configs and the command line; register your own ``Sampler`` subclass with
#: ``SAMPLERS.register(cls, "name")``
SAMPLERS: Registry[Sampler] = Registry("sampler")
_BUILT_IN: tuple[type[Sampler], ...] = (
    DDPMSampler,
    PosteriorMeanSampler,
    DDIMSampler,
    *dpm_solver.SOLVERS,
    *unipc.SOLVERS,
    *karras.SOLVERS,
)
for _cls in _BUILT_IN:
    SAMPLERS.register(_cls, _cls.name)


def get_sampler(sampler: Sampler | str | type[Sampler], **kwargs: Any) -> Sampler:
    """Resolve a sampler given as an object, a registered name or a class.

    Objects are the primary API; names are for configs and the command line.

    Args:
        sampler: a :class:`Sampler` (returned as is); a name registered in :data:`SAMPLERS`
            (``"ddpm"``, ``"ddim"``, ``"dpm++2m"``, a class name such as ``"DDIMSampler"``, or
            any name you registered); or a ``Sampler`` subclass.
        **kwargs: constructor arguments, when ``sampler`` is a name or a class.

    Returns:
        The sampler object.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or invalid arguments.
        TypeError: ``sampler`` is none of the above, or keyword arguments come with an object.

    Example:
        >>> get_sampler("ddim", eta=0.5)
        DDIMSampler(eta=0.5, clip_x0=False)
    """
    if isinstance(sampler, Sampler):
        if kwargs:
            raise TypeError(
                "keyword arguments apply only when sampler is a name or a class; got the "
                f"object {sampler!r} and {sorted(kwargs)}"
            )
        return sampler
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            valid = ", ".join(repr(n) for n in SAMPLERS.names())
            raise ValueError(f"unknown sampler {sampler!r}; valid names: {valid}")
        cls: type[Any] = SAMPLERS.get(sampler)
    elif isinstance(sampler, type) and issubclass(sampler, Sampler):
        cls = sampler
    else:
        raise TypeError(
            "sampler must be a Sampler, a registered sampler name or a Sampler subclass; got "
            f"{type(sampler).__name__}"
        )
    try:
        built = cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"invalid arguments for sampler {cls.__name__}: {err}") from None
    if not isinstance(built, Sampler):
        raise TypeError(f"{cls.__name__} is registered as a sampler but is not a Sampler")
    return built
