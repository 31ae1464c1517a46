"""The diffusionkit checkpoint format: ``config.json`` + safetensors weights (+ EMA, card, grid).

A checkpoint folder holds:

* ``config.json``: every component's class and constructor arguments, the format version, and
  the name and sha256 of each weights file (schema below);
* ``model.safetensors``: the network's learned weights (its ``state_dict``; no schedule tables);
* ``ema.safetensors`` (optional): an exponential moving average of the same weights, loaded by
  default when present;
* ``sample_grid.png`` (optional) and ``README.md``, the model card.

``config.json`` schema (format 3)::

    {
      "diffusionkit_format": 3,                 # bumped on incompatible changes
      "diffusionkit_version": "0.1.0",          # the writer, for messages
      "kind": "diffusion",                      # or "network" (a network saved alone)
      "net": {"class": "UNet", "config": {...}},
      # "diffusion" only: every other DenoiseDiffusion constructor argument, by name
      "schedule": {"class": "LinearSchedule", "config": {...}},
      "sampler": {"class": "DDPMSampler", "config": {...}},
      "prediction": "eps",
      "weighting": null,                        # or {"class": "MinSNRWeighting", ...}
      "x0_processing": {"class": "ClipX0", "config": {}},    # or null (format 2)
      "learned_variance": false,                # format 3
      "vlb_weight": 0.001,                      # format 3
      "weights": {
        "model": {"file": "model.safetensors", "sha256": "<64 hex>"},
        "ema": {"file": "ema.safetensors", "sha256": "<64 hex>"}   # optional
      },
      "sample_grid": "sample_grid.png"          # optional
    }

Format 1 (diffusionkit 0.1) had no ``x0_processing``: the only clipping of ``x0_hat`` was the
sampler's own ``clip_x0``, which ``diffusionkit train`` set as a property of the model. A
format-1 checkpoint whose sampler clips therefore loads with ``x0_processing = ClipX0()`` (the
``DenoiseDiffusion`` constructor's rule for a missing ``x0_processing`` and a clipping sampler):
its own sampler samples exactly as before, and samplers chosen by name clip too; one whose
sampler does not clip loads with ``None``. Format 2 had no ``learned_variance`` and
``vlb_weight`` (Nichol & Dhariwal 2021): its models load with fixed variances. Saving writes
format 3.

Components are ``{"class": <name in its registry>, "config": <constructor arguments>}``, nested
where an argument is itself a component (:mod:`~diffusionkit.hub.components`). The model's
arguments are read from the constructor's signature, so an argument added to
``DenoiseDiffusion`` is saved without changes here, or refused if it cannot be. Weights files
hold the *network's* tensors (names as in ``net.state_dict()``), for both kinds, so a network
can be loaded alone from a full model's checkpoint.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from diffusionkit._version import __version__
from diffusionkit.diffusion import DenoiseDiffusion
from diffusionkit.hub.atomic import staged_directory
from diffusionkit.hub.card import GENERATED_MARKER, CardFacts, render_card
from diffusionkit.hub.components import (
    FAMILIES,
    build_component,
    constructor_arguments,
    decode_arguments,
    describe_component,
    encode,
    family_of,
)
from diffusionkit.hub.errors import CheckpointError
from diffusionkit.hub.integrity import sha256_file
from diffusionkit.hub.weights import check_tensors, save_safetensors

__all__ = [
    "CONFIG_NAME",
    "EMA_WEIGHTS_NAME",
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "WEIGHTS_NAME",
    "CheckpointConfig",
    "Kind",
    "WeightsFile",
    "build_model",
    "ema_tensors",
    "is_diffusionkit_config",
    "model_kind",
    "network_of",
    "parse_config",
    "read_json",
    "write_checkpoint",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EMA_WEIGHTS_NAME = "ema.safetensors"
SAMPLE_GRID_NAME = "sample_grid.png"
CARD_NAME = "README.md"
FORMAT_KEY = "diffusionkit_format"
FORMAT_VERSION = 3

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Kind(str, enum.Enum):
    """What a checkpoint holds."""

    DIFFUSION = "diffusion"  #: a :class:`~diffusionkit.DenoiseDiffusion`: net, schedule, sampler
    NETWORK = "network"  #: a network alone


def model_kind(cls: type) -> Kind:
    """The kind of checkpoint ``cls`` saves and loads."""
    return Kind.DIFFUSION if issubclass(cls, DenoiseDiffusion) else Kind.NETWORK


def network_of(model: nn.Module) -> nn.Module:
    """The network whose weights a checkpoint stores: ``model.net``, or ``model`` itself."""
    if model_kind(type(model)) is Kind.DIFFUSION:
        net = model.net
        assert isinstance(net, nn.Module)
        return net
    return model


# ----------------------------------------------------------------------------- writing


_NETWORKS = FAMILIES[0]
_META_KEYS = frozenset({FORMAT_KEY, "diffusionkit_version", "kind", "weights", "sample_grid"})


def _describe_model(model: nn.Module) -> dict[str, Any]:
    kind = model_kind(type(model))
    config: dict[str, Any] = {
        FORMAT_KEY: FORMAT_VERSION,
        "diffusionkit_version": __version__,
        "kind": kind.value,
    }
    if kind is Kind.NETWORK:
        config["net"] = describe_component(model, "net")
        return config
    outside = sorted(k for k in model.state_dict() if not k.startswith("net."))
    if outside:
        raise TypeError(
            f"cannot save {type(model).__name__}: it has state outside its net "
            f"({', '.join(outside[:5])}), which the checkpoint format does not store"
        )
    for name, value in constructor_arguments(model).items():
        if name in _META_KEYS:
            raise TypeError(f"cannot save {type(model).__name__}: argument {name!r} is reserved")
        if family_of(value) is not None:
            config[name] = describe_component(value, name)
        else:
            config[name] = encode(value, name)
    return config


def ema_tensors(ema: nn.Module | Mapping[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """The EMA weights as the network's ``state_dict`` names, checked against ``net``.

    Args:
        ema: a module of the same architecture as ``net`` (also accepted: a whole
            ``DenoiseDiffusion``, or a wrapper with a ``.module`` such as ``AveragedModel`` or
            DDP), or a state dict with ``net``'s names (optionally prefixed ``"net."``).
        net: the network the EMA averages.

    Raises:
        ValueError: the EMA does not have ``net``'s tensor names and shapes.
    """
    if isinstance(ema, nn.Module):
        module = ema
        while isinstance(getattr(module, "module", None), nn.Module):
            module = module.module  # type: ignore[assignment]
        if isinstance(module, DenoiseDiffusion):
            module = module.net
        tensors = dict(module.state_dict())
    elif isinstance(ema, Mapping):
        tensors = dict(ema)
        if tensors and all(isinstance(k, str) and k.startswith("net.") for k in tensors):
            tensors = {k.removeprefix("net."): v for k, v in tensors.items()}
    else:
        raise TypeError(f"ema must be an nn.Module or a state dict, got {type(ema).__name__}")
    if not all(isinstance(v, Tensor) for v in tensors.values()):
        raise TypeError("ema state dict values must all be tensors")
    try:
        check_tensors(tensors, net.state_dict(), "ema", f"network ({type(net).__name__})")
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    return tensors


#: the files write_checkpoint may replace or remove: nothing else in a folder is touched
_OWN_FILES = frozenset({CONFIG_NAME, WEIGHTS_NAME, EMA_WEIGHTS_NAME, SAMPLE_GRID_NAME, CARD_NAME})


def _previous_files(directory: Path) -> set[str]:
    """Files of a diffusionkit checkpoint already in ``directory`` that a new one may replace.

    Only names this writer itself uses count, whatever the old ``config.json`` lists: a
    config that names another file (edited by hand, or written by something else) must not
    make saving delete it.

    Raises:
        FileExistsError: ``directory`` holds a ``config.json`` that is not a diffusionkit
            checkpoint's (a diffusers model, another library's): it is not overwritten.
    """
    path = directory / CONFIG_NAME
    if not path.exists():
        return set()
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if not is_diffusionkit_config(old):
        raise FileExistsError(
            f"{path} exists and is not a diffusionkit checkpoint's config.json: refusing to "
            "overwrite it. Save into another folder, or move that file away first."
        )
    names = {
        entry.get("file")
        for entry in (old.get("weights") or {}).values()
        if isinstance(entry, dict)
    }
    names.add(old.get("sample_grid"))
    return {n for n in names if isinstance(n, str)} & _OWN_FILES


def write_checkpoint(
    model: nn.Module,
    directory: Path,
    *,
    ema: nn.Module | Mapping[str, Tensor] | None = None,
    sample_grid: str | Path | None = None,
    card_source: str | None = None,
) -> Path:
    """Write ``model`` as a diffusionkit checkpoint into ``directory``, atomically.

    Args:
        model: a ``DenoiseDiffusion`` or a registered network.
        directory: created if needed; other files in it are left alone (only the files of a
            diffusionkit checkpoint that this one no longer has are removed).
        ema: EMA weights to store beside the raw ones (see :func:`ema_tensors`).
        sample_grid: a PNG of samples, copied in and shown on the model card.
        card_source: repo id or path the model card's usage example loads from.

    Returns:
        ``directory`` as a ``Path``.
    """
    directory = Path(directory)
    previous = _previous_files(directory)  # refuses a foreign config.json before any work
    config = _describe_model(model)
    net = network_of(model)
    raw = dict(net.state_dict())
    ema_state = ema_tensors(ema, net) if ema is not None else None
    grid = Path(sample_grid) if sample_grid is not None else None
    if grid is not None:
        with grid.open("rb") as f:
            if f.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
                raise ValueError(f"sample_grid must be a PNG file, got {grid}")
    existing_card = directory / CARD_NAME
    keep_card = existing_card.is_file() and not _is_generated_card(existing_card)

    written = {CONFIG_NAME, WEIGHTS_NAME}
    with staged_directory(directory, commit_file=CONFIG_NAME) as stage:
        weights: dict[str, Any] = {}
        for role, name, tensors in (
            ("model", WEIGHTS_NAME, raw),
            ("ema", EMA_WEIGHTS_NAME, ema_state),
        ):
            if tensors is None:
                continue
            save_safetensors(tensors, stage / name)
            weights[role] = {"file": name, "sha256": sha256_file(stage / name)}
            written.add(name)
        config["weights"] = weights
        if grid is not None:
            shutil.copyfile(grid, stage / SAMPLE_GRID_NAME)
            config["sample_grid"] = SAMPLE_GRID_NAME
            written.add(SAMPLE_GRID_NAME)
        if not keep_card:
            facts = CardFacts.from_config(
                config,
                source=card_source or str(directory),
                params=sum(t.numel() for t in net.parameters()),
                in_channels=getattr(net, "in_channels", None),
                size_multiple=getattr(net, "size_multiple", None),
            )
            (stage / CARD_NAME).write_text(render_card(facts), encoding="utf-8")
        text = json.dumps(config, indent=2, allow_nan=False) + "\n"
        (stage / CONFIG_NAME).write_text(text, encoding="utf-8")
    for name in previous - written:  # listed only by the replaced config.json: safe to drop
        (directory / name).unlink(missing_ok=True)
    return directory


def _is_generated_card(path: Path) -> bool:
    try:
        return GENERATED_MARKER in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


# ----------------------------------------------------------------------------- reading


def read_json(path: Path, label: str) -> Any:
    """Parse a JSON file, with an error naming ``label`` if it is missing, truncated or corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{label}: file not found") from None
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(
            f"{label}: not valid JSON ({err}); it is truncated or corrupt"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_diffusionkit_config(config: Any) -> bool:
    """Whether parsed ``config.json`` data is a diffusionkit checkpoint's."""
    return isinstance(config, dict) and FORMAT_KEY in config


@dataclass(frozen=True)
class WeightsFile:
    """One weights file of a checkpoint and the sha256 its ``config.json`` records."""

    file: str
    sha256: str


@dataclass(frozen=True)
class CheckpointConfig:
    """A validated ``config.json`` (components still as ``{"class", "config"}`` entries)."""

    kind: Kind
    format_version: int
    writer_version: str
    arguments: dict[str, Any]  # the model's constructor arguments as JSON ("net" for a network)
    weights: dict[str, WeightsFile]  # "model" and optionally "ema"

    def weights_to_load(self, use_ema: bool) -> WeightsFile:
        """The EMA weights when present and wanted, else the raw ones."""
        return self.weights["ema"] if use_ema and "ema" in self.weights else self.weights["model"]


def parse_config(config: Any, label: str) -> CheckpointConfig:
    """Validate parsed ``config.json`` data (structure, types, format version, file names).

    Raises:
        CheckpointError: naming ``label`` and the first problem found.
    """
    if not is_diffusionkit_config(config):
        raise CheckpointError(f"{label}: not a diffusionkit config (no {FORMAT_KEY!r} key)")
    version = config[FORMAT_KEY]
    writer = config.get("diffusionkit_version", "unknown")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{label}: {FORMAT_KEY} must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{label}: written by diffusionkit {writer} in checkpoint format {version}; this "
            f"diffusionkit ({__version__}) reads format {FORMAT_VERSION} and older. Upgrade: "
            "pip install -U diffusionkit"
        )
    try:
        kind = Kind(config.get("kind"))
    except ValueError:
        valid = ", ".join(repr(k.value) for k in Kind)
        raise CheckpointError(
            f"{label}: 'kind' must be one of {valid}, got {config.get('kind')!r}"
        ) from None
    if "net" not in config:
        raise CheckpointError(f"{label}: missing 'net'")
    arguments = {k: v for k, v in config.items() if k not in _META_KEYS}
    later = sorted(_ADDED_AFTER.get(version, frozenset()) & set(arguments))
    if later:
        raise CheckpointError(f"{label}: {later[0]!r} does not exist in format {version}")
    if kind is Kind.NETWORK and set(arguments) != {"net"}:
        raise CheckpointError(
            f"{label}: a network checkpoint holds only 'net', got {', '.join(sorted(arguments))}"
        )
    weights = config.get("weights")
    if not isinstance(weights, dict) or "model" not in weights:
        raise CheckpointError(f"{label}: 'weights' must be an object with a 'model' entry")
    unknown = sorted(set(weights) - {"model", "ema"})
    if unknown:
        raise CheckpointError(f"{label}: unknown weights entries {unknown}; known: model, ema")
    files = {
        role: _weights_file(entry, f"{label}: weights.{role}") for role, entry in weights.items()
    }
    return CheckpointConfig(
        kind=kind,
        format_version=version,
        writer_version=str(writer),
        arguments=arguments,
        weights=files,
    )


def _weights_file(entry: Any, where: str) -> WeightsFile:
    if not isinstance(entry, dict):
        raise CheckpointError(f"{where} must be an object with 'file' and 'sha256'")
    name, digest = entry.get("file"), entry.get("sha256")
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise CheckpointError(f"{where}: 'file' must be a plain file name, got {name!r}")
    if not name.endswith(".safetensors"):
        raise CheckpointError(
            f"{where}: {name!r} is not a .safetensors file; diffusionkit checkpoints hold "
            "safetensors only (pickles are never loaded from them)"
        )
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise CheckpointError(f"{where}: 'sha256' must be 64 lowercase hex digits, got {digest!r}")
    return WeightsFile(name, digest)


#: constructor arguments a checkpoint of a format cannot hold (added by a later format): they
#: take their defaults
_ADDED_AFTER: dict[int, frozenset[str]] = {
    1: frozenset({"x0_processing", "learned_variance", "vlb_weight"}),
    2: frozenset({"learned_variance", "vlb_weight"}),
}


def _model_arguments(cls: type) -> list[str]:
    """The names of ``cls``'s constructor arguments (what a checkpoint must record)."""
    return [
        name
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def build_model(
    cls: type, config: CheckpointConfig, label: str, *, meta: bool = False
) -> nn.Module:
    """Build an instance of ``cls`` (random weights) from a validated config.

    ``cls`` is a ``DenoiseDiffusion`` class (needs a ``"diffusion"`` checkpoint) or a network
    class (takes the network of either kind). With ``meta``, the network is built on the meta
    device (no memory, no initialization), to be filled by ``load_into``.
    """
    if model_kind(cls) is Kind.DIFFUSION:
        if config.kind is not Kind.DIFFUSION:
            net_class = config.arguments["net"].get("class", "network")
            raise CheckpointError(
                f"{label}: this checkpoint holds a network alone ({net_class}), not a "
                f"{cls.__name__}: load it with {net_class}.from_pretrained and build "
                "DenoiseDiffusion(net, schedule) around it"
            )
        newer = _ADDED_AFTER.get(config.format_version, frozenset())
        missing = sorted(set(_model_arguments(cls)) - set(config.arguments) - newer)
        if missing:
            raise CheckpointError(
                f"{label}: missing {', '.join(repr(m) for m in missing)}: a {cls.__name__} "
                "checkpoint records every constructor argument (a default could describe "
                "another model, e.g. T = 1000 for a T = 50 one); the file is incomplete"
            )
        kwargs = decode_arguments(cls, config.arguments, label, meta=meta)
        try:
            model = cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{label}: invalid config: {err}") from None
        assert isinstance(model, nn.Module)
        return model
    net = build_component(config.arguments["net"], _NETWORKS, label, meta=meta)
    if not isinstance(net, cls):
        raise CheckpointError(
            f"{label}: the checkpoint's network is a {type(net).__name__}, not a {cls.__name__}"
        )
    assert isinstance(net, nn.Module)
    return net
