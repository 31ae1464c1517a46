"""Import the peer implementations the benchmarks compare against, without their extra baggage.

lucidrains' ``denoising_diffusion_pytorch`` (2.x) runs
``from torchvision import transforms as T, utils`` at the top of ``denoising_diffusion_pytorch.py``
and uses those two names only in its ``Dataset`` (image transforms) and ``Trainer``
(``utils.save_image``). The benchmarks drive its ``Unet`` and ``GaussianDiffusion`` directly, so
torchvision is not needed, but PyPI's torchvision wheel cannot be imported beside this project's
torch build. (``repaint.py`` and ``guided_diffusion.py`` import torchvision the same way, but the
package's ``__init__`` does not import them.) Its other module-level imports (accelerate,
ema_pytorch, scipy, PIL, einops, tqdm, packaging) are ordinary dependencies of the package and
import normally; ``pytorch_fid`` is imported only when its Trainer computes FID.

Things to know when comparing against it (read from ``GaussianDiffusion.__init__``):
``objective="pred_v"`` and ``beta_schedule="sigmoid"`` are its defaults (a DDPM as in Ho et al. 2020
needs ``objective="pred_noise", beta_schedule="linear"``), and with ``auto_normalize=True`` (the
default) it expects data in [0, 1] and returns samples in [0, 1].
"""

from __future__ import annotations

import sys
import types
from typing import Any

_STAND_IN_NAMES = ("torchvision", "torchvision.transforms", "torchvision.utils")


class TorchvisionUnavailableError(ImportError):
    """Raised when code reaches into the torchvision stand-in installed by :func:`import_lucidrains`."""


class _UnavailableModule(types.ModuleType):
    """A module whose every public attribute raises :class:`TorchvisionUnavailableError`.

    Dunder look-ups (``__path__``, ``__file__`` ...) raise ``AttributeError`` as for any module,
    so the import machinery, ``hasattr`` and ``inspect`` treat it as an ordinary module.
    """

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        raise TorchvisionUnavailableError(
            f"{self.__name__}.{attr} was used, but torchvision is not importable here: "
            "benchmarks.quality.peers.import_lucidrains imported denoising_diffusion_pytorch with a stand-in that "
            "only satisfies its module-level import. Only Unet / GaussianDiffusion are usable; "
            "its Dataset and Trainer need a working torchvision."
        )


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or e.g. RuntimeError / OSError from a mismatched wheel
        return False
    return True


def _make_stand_in() -> dict[str, types.ModuleType]:
    root = _UnavailableModule(
        "torchvision", "Stand-in for torchvision (see benchmarks.quality.peers)."
    )
    subs = {
        name: _UnavailableModule(f"torchvision.{name}", "Stand-in; every attribute raises.")
        for name in ("transforms", "utils")
    }
    # Set as plain attributes so `from torchvision import transforms as T, utils` binds them.
    for name, module in subs.items():
        setattr(root, name, module)
    return {"torchvision": root, **{m.__name__: m for m in subs.values()}}


def import_lucidrains() -> tuple[type, type]:
    """Import lucidrains' ``denoising_diffusion_pytorch`` and return ``(Unet, GaussianDiffusion)``.

    If ``import torchvision`` works, this is a plain import. Otherwise, for the duration of the
    import only, ``sys.modules`` holds a stand-in ``torchvision`` with ``transforms`` and ``utils``
    submodules whose attributes raise :class:`TorchvisionUnavailableError` when used. The stand-in
    is removed afterwards (earlier entries restored), so other libraries that probe for
    torchvision (diffusers, accelerate via ``importlib.util.find_spec``) still see it as missing;
    lucidrains' module keeps its own references to the stand-in as ``T`` and ``utils``.

    Raises:
        ImportError: ``denoising_diffusion_pytorch`` (or one of its other dependencies) is missing.
    """
    if "denoising_diffusion_pytorch" not in sys.modules and not _torchvision_importable():
        saved = {name: sys.modules.get(name) for name in _STAND_IN_NAMES}
        # A failed import can leave half-initialised torchvision submodules behind; hide them too.
        partial = {n: m for n, m in sys.modules.items() if n.startswith("torchvision.")}
        for name in partial:
            del sys.modules[name]
        sys.modules.update(_make_stand_in())
        try:
            import denoising_diffusion_pytorch  # noqa: F401
        finally:
            for name in _STAND_IN_NAMES:
                sys.modules.pop(name, None)
            sys.modules.update({n: m for n, m in saved.items() if m is not None})
            sys.modules.update(partial)
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    return Unet, GaussianDiffusion
