"""Objects to and from JSON: components as ``{"class": name, "config": {...}}``, by registry.

A *component* is an instance of one of the pluggable families (network, noise schedule,
sampler, loss weighting). Its class is named through the family's registry (``NETWORKS``,
``SCHEDULES``, ``SAMPLERS``, ``WEIGHTINGS``), so a user's own class saves and loads once
registered, and an unknown name fails listing the valid ones. Its constructor arguments come
from its ``config()``; an argument that is itself a component (the ``base`` of a
``ZeroTerminalSNRSchedule``) nests, and is rebuilt on loading because the constructor's type
annotation says which family it belongs to.

Saving proves that a config is complete: the component is rebuilt from the JSON about to be
written and must give the same config (and, for networks, the same tensor shapes), so a
``config()`` that forgets an argument fails when saving, not when someone loads the file.
"""

from __future__ import annotations

import enum
import inspect
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from diffusionkit.hub.errors import CheckpointError
from diffusionkit.limits import LimitError, check_timesteps, check_unet_config
from diffusionkit.networks import NETWORKS, UNet
from diffusionkit.registry import Registry
from diffusionkit.samplers import SAMPLERS, Sampler
from diffusionkit.schedules import SCHEDULES, NoiseSchedule
from diffusionkit.thresholding import X0_PROCESSINGS, X0Processing
from diffusionkit.weighting import WEIGHTINGS, LossWeighting

__all__ = [
    "Family",
    "build_component",
    "constructor_arguments",
    "decode_arguments",
    "describe_component",
    "encode",
    "family_of",
]


@dataclass(frozen=True)
class Family:
    """A kind of pluggable part: its base class and the registry naming its classes."""

    what: str  # for messages, e.g. "network"
    base: type
    registry: Registry[Any]
    registry_name: str  # where users find the registry, e.g. "diffusionkit.schedules.SCHEDULES"

    @property
    def short_name(self) -> str:
        return self.registry_name.rsplit(".", 1)[1]


FAMILIES = (
    Family("network", nn.Module, NETWORKS, "diffusionkit.networks.NETWORKS"),
    Family("noise schedule", NoiseSchedule, SCHEDULES, "diffusionkit.schedules.SCHEDULES"),
    Family("sampler", Sampler, SAMPLERS, "diffusionkit.samplers.SAMPLERS"),
    Family("loss weighting", LossWeighting, WEIGHTINGS, "diffusionkit.weighting.WEIGHTINGS"),
    Family(
        "x0 processing", X0Processing, X0_PROCESSINGS, "diffusionkit.thresholding.X0_PROCESSINGS"
    ),
)


def family_of(obj: object) -> Family | None:
    """The family ``obj`` is an instance of, or ``None`` for plain data."""
    return next((f for f in FAMILIES if isinstance(obj, f.base)), None)


def _family_of_annotation(annotation: Any) -> Family | None:
    """The family a constructor annotation asks for (``NoiseSchedule | None`` -> schedules)."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type):
            for family in FAMILIES:
                if issubclass(candidate, family.base):
                    return family
    return None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


# ----------------------------------------------------------------------------- saving


def _registered_name(obj: object, family: Family) -> str:
    cls = type(obj)
    name = cls.__name__
    registry = family.registry
    short = family.short_name
    if name not in registry or registry.get(name) is not cls:
        raise TypeError(
            f"cannot save the {family.what} {name}: it is not registered in "
            f"{family.registry_name}. Register it with {short}.register({name}); it also needs "
            "a config() method that returns its constructor arguments."
        )
    if not callable(getattr(obj, "config", None)):
        raise TypeError(
            f"cannot save the {family.what} {name}: it has no config() method returning its "
            "constructor arguments"
        )
    return name


def encode(value: Any, where: str) -> Any:
    """``value`` as JSON data: components as ``{"class", "config"}``, enums as their value.

    Raises:
        TypeError: naming ``where``, for a value JSON cannot hold or an unregistered component.
    """
    family = family_of(value)
    if family is not None:
        name = _registered_name(value, family)
        raw = value.config()
        if not isinstance(raw, Mapping):
            raise TypeError(f"{name}.config() must return a dict, got {type(raw).__name__}")
        return {"class": name, "config": {k: encode(v, f"{where}.{k}") for k, v in raw.items()}}
    if isinstance(value, enum.Enum):
        return encode(value.value, where)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, (list, tuple)):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: encode(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(
        f"cannot save {where}: a {type(value).__name__} is neither JSON data nor a registered "
        "component (network, noise schedule, sampler, loss weighting, x0 processing)"
    )


def describe_component(obj: object, where: str) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` for a registered component, verified to rebuild it.

    Raises:
        TypeError: the class (or a nested one) is not registered, has no ``config()``, or its
            config is not JSON.
        ValueError: rebuilding from the config fails or gives a different component.
    """
    family = family_of(obj)
    if family is None:
        raise TypeError(f"{where} is a {type(obj).__name__}, not a component")
    entry = json.loads(json.dumps(encode(obj, where)))  # exactly what a reader will see
    name = entry["class"]
    try:
        rebuilt = build_component(entry, family, f"{name}.config()", meta=True)
    except CheckpointError as err:
        raise ValueError(
            f"{name}(**{name}.config()) fails, so it could not be loaded: {err}"
        ) from None
    again = json.loads(json.dumps(encode(rebuilt, where)))
    if again != entry:
        config, rebuilt_config = entry["config"], again["config"]
        changed = sorted(
            k for k in set(config) | set(rebuilt_config) if config.get(k) != rebuilt_config.get(k)
        )
        raise ValueError(
            f"{name}.config() does not describe the object: rebuilding from it changes "
            f"{', '.join(changed)}"
        )
    if isinstance(obj, nn.Module) and isinstance(rebuilt, nn.Module):
        want = {k: tuple(v.shape) for k, v in obj.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
        if want != got:
            raise ValueError(
                f"{name}(**{name}.config()) builds a network with different tensors than this "
                "one, so its weights could not be loaded: config() misses a constructor "
                "argument, or the network was changed after construction"
            )
    return typing.cast(dict[str, Any], entry)


def constructor_arguments(obj: object) -> dict[str, Any]:
    """``obj``'s constructor arguments, read from its same-named attributes.

    For objects without a ``config()`` (a ``DenoiseDiffusion``): every argument of the
    constructor must be stored under its own name, which is the house rule.

    Raises:
        TypeError: an argument has no attribute of its name (it would be lost).
    """
    args = {}
    for name, param in inspect.signature(type(obj)).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"cannot save {type(obj).__name__}: its constructor takes *{name}")
        if not hasattr(obj, name):
            raise TypeError(
                f"cannot save {type(obj).__name__}: its constructor argument {name!r} is not "
                "kept as an attribute of that name, so it would be lost"
            )
        args[name] = getattr(obj, name)
    return args


# ----------------------------------------------------------------------------- loading


def _matches(value: Any, annotation: Any) -> bool:
    """Whether JSON ``value`` fits a constructor annotation (unknown annotations accept all)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    if _is_union(annotation):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, str)
    if _family_of_annotation(annotation) is not None:
        return isinstance(value, dict)
    if isinstance(origin, type) and issubclass(origin, Sequence):
        if not isinstance(value, list):
            return False
        args = typing.get_args(annotation)
        return not args or all(_matches(v, args[0]) for v in value)
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return isinstance(value, dict)
    return True


def _describe(annotation: Any) -> str:
    plain = typing.get_origin(annotation) is None and hasattr(annotation, "__name__")
    text = annotation.__name__ if plain else str(annotation)
    return text.replace("typing.", "").replace("collections.abc.", "")


def decode_arguments(
    cls: type, config: Mapping[str, Any], label: str, *, meta: bool = False
) -> dict[str, Any]:
    """Check ``config`` against ``cls``'s constructor and rebuild nested components.

    Unknown and missing arguments and values of the wrong JSON type are refused before anything
    is built; an argument annotated with a component family (``schedule: NoiseSchedule``) is
    built from its ``{"class", "config"}`` entry (a network on the meta device with ``meta``).

    Raises:
        CheckpointError: naming ``label``, the class and the argument.
    """
    try:  # evaluate string annotations (``from __future__ import annotations``)
        signature, typed = inspect.signature(cls, eval_str=True), True
    except Exception:  # annotations that do not evaluate: leave the types to the constructor
        signature, typed = inspect.signature(cls), False
    params = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise CheckpointError(
            f"{label}: {cls.__name__} takes no argument(s) {', '.join(unknown)} (this "
            f"diffusionkit's {cls.__name__} takes {', '.join(params)}; a newer diffusionkit "
            "may have written them)"
        )
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in config)
    if missing:
        raise CheckpointError(f"{label}: {cls.__name__} needs argument(s) {', '.join(missing)}")
    kwargs = dict(config)
    if not typed:
        return kwargs
    for name, value in config.items():
        hint = params[name].annotation
        if not _matches(value, hint):
            raise CheckpointError(
                f"{label}: {cls.__name__} argument {name!r} must be {_describe(hint)}, got "
                f"{json.dumps(value)[:200]}"
            )
        family = _family_of_annotation(hint)
        if family is not None and isinstance(value, dict):
            where = f"{label}: {cls.__name__}.{name}"
            kwargs[name] = build_component(value, family, where, meta=meta)
    return kwargs


def _check_limits(cls: type, config: Mapping[str, Any], where: str) -> None:
    """Refuse sizes that would allocate without bound before anything is built
    (:mod:`diffusionkit.limits`): a schedule's ``timesteps``, a ``UNet``'s channels and levels."""
    try:
        if issubclass(cls, NoiseSchedule) and "timesteps" in config:
            check_timesteps(config["timesteps"], where)
        if issubclass(cls, UNet):
            check_unet_config(config, where)
    except LimitError as err:
        raise CheckpointError(str(err)) from None


def build_component(entry: Any, family: Family, label: str, *, meta: bool = False) -> Any:
    """Build a component from ``{"class": name, "config": {...}}`` read from ``label``.

    Args:
        entry: the parsed JSON entry.
        family: which registry names its class.
        label: the file (and place in it), for error messages.
        meta: build networks on the meta device (no memory, no initialization): for checks.

    Raises:
        CheckpointError: the entry is malformed, the class unknown, or the config invalid.
    """
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("class"), str)
        or not isinstance(entry.get("config"), dict)
    ):
        raise CheckpointError(
            f"{label}: a {family.what} must be an object with a 'class' name and a 'config' "
            f"object, got {json.dumps(entry)[:200]}"
        )
    name, config = entry["class"], entry["config"]
    try:
        cls = family.registry.get(name)
    except KeyError as err:
        raise CheckpointError(
            f"{label}: {err.args[0]}. If {name} is your own class, register it in "
            f"{family.registry_name} (import the module that does) before loading."
        ) from None
    where = f"{label}: {family.what} {name}"
    _check_limits(cls, config, where)
    kwargs = decode_arguments(cls, config, where, meta=meta)
    try:
        if meta and issubclass(cls, nn.Module):
            try:
                with torch.device("meta"):
                    return cls(**kwargs)
            except (NotImplementedError, RuntimeError):
                pass  # a constructor that computes with tensors: build it for real
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: invalid config: {err}") from None
