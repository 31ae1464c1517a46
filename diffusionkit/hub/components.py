"""Components (network, schedule, sampler) to and from ``{"class": name, "config": {...}}``.

Names go through the registries (``NETWORKS``, ``SCHEDULES``, ``SAMPLERS``), so a user's own
class saves and loads once registered, and an unknown name fails listing the valid ones. Saving
proves that the config is complete: it rebuilds the component from the JSON it is about to
write and requires the same ``config()`` (and, for networks, the same tensor shapes), so a
``config()`` that forgets a constructor argument is caught when saving, not months later.
"""

from __future__ import annotations

import enum
import inspect
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from diffusionkit.hub.errors import CheckpointError
from diffusionkit.registry import Registry

__all__ = ["Role", "build_component", "describe_component", "json_value"]

T = TypeVar("T")


class Role(enum.Enum):
    """Which part of a model a component plays, with the registry that names its classes."""

    NET = "net"
    SCHEDULE = "schedule"
    SAMPLER = "sampler"

    @property
    def registry(self) -> Registry[Any]:
        if self is Role.NET:
            from diffusionkit.networks import NETWORKS

            return NETWORKS
        if self is Role.SCHEDULE:
            from diffusionkit.schedules import SCHEDULES

            return SCHEDULES
        from diffusionkit.samplers import SAMPLERS

        return SAMPLERS

    @property
    def registry_path(self) -> str:
        return {
            Role.NET: "diffusionkit.networks.NETWORKS",
            Role.SCHEDULE: "diffusionkit.schedules.SCHEDULES",
            Role.SAMPLER: "diffusionkit.samplers.SAMPLERS",
        }[self]


def json_value(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (tuples become lists); ``TypeError`` naming ``where`` otherwise."""
    if value is None or isinstance(value, (bool, int, str)):
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value}, which JSON cannot hold")
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: json_value(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"{where} is a {type(value).__name__}, which is not JSON data")


def _registered_name(obj: object, role: Role) -> str:
    cls = type(obj)
    name = cls.__name__
    registry = role.registry
    if name not in registry or registry.get(name) is not cls:
        raise TypeError(
            f"cannot save the {role.value} {name}: it is not registered in {role.registry_path}. "
            f"Register it with {role.registry_path.rsplit('.', 1)[1]}.register({name}); it also "
            "needs a config() method that returns its constructor arguments."
        )
    if not callable(getattr(obj, "config", None)):
        raise TypeError(
            f"cannot save the {role.value} {name}: it has no config() method returning its "
            "constructor arguments"
        )
    return name


def _rebuild(cls: type[T], config: dict[str, Any], role: Role) -> T:
    if role is Role.NET:
        try:  # no memory, no init cost: only the structure is compared
            with torch.device("meta"):
                return cls(**config)
        except (NotImplementedError, RuntimeError):
            pass  # a network whose constructor computes with tensors: build it for real
    return cls(**config)


def describe_component(obj: object, role: Role) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` for a registered component, verified to rebuild it.

    Raises:
        TypeError: the class is not registered, has no ``config()``, or its config is not JSON.
        ValueError: rebuilding from the config gives a different component.
    """
    name = _registered_name(obj, role)
    cls = type(obj)
    raw = obj.config()  # type: ignore[attr-defined]
    if not isinstance(raw, Mapping):
        raise TypeError(f"{name}.config() must return a dict, got {type(raw).__name__}")
    config = json_value(raw, f"{name}.config()")
    config = json.loads(json.dumps(config))  # exactly what a reader will see
    try:
        rebuilt = _rebuild(cls, dict(config), role)
    except Exception as err:
        raise ValueError(
            f"{name}(**{name}.config()) fails, so it could not be loaded: {err}"
        ) from err
    again = json_value(rebuilt.config(), f"{name}.config()")  # type: ignore[attr-defined]
    if again != config:
        changed = sorted(k for k in set(config) | set(again) if config.get(k) != again.get(k))
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
    return {"class": name, "config": config}


# ----------------------------------------------------------------------------- loading


def _matches(value: Any, annotation: Any) -> bool:
    """Whether JSON ``value`` fits a constructor annotation (unknown annotations accept all)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
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
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence):
        if not isinstance(value, list):
            return False
        args = typing.get_args(annotation)
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return isinstance(value, dict)
    return True


def _check_arguments(cls: type, config: Mapping[str, Any], label: str) -> None:
    """Reject unknown and missing arguments, and values of the wrong JSON type, before building."""
    try:  # evaluate string annotations (``from __future__ import annotations``) for type checks
        signature = inspect.signature(cls, eval_str=True)
        typed = True
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
            f"{label}: {cls.__name__} takes no argument(s) {', '.join(unknown)}; it takes "
            f"{', '.join(params)}"
        )
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in config)
    if missing:
        raise CheckpointError(f"{label}: {cls.__name__} needs argument(s) {', '.join(missing)}")
    if not typed:
        return
    for name, value in config.items():
        hint = params[name].annotation
        if not _matches(value, hint):
            raise CheckpointError(
                f"{label}: {cls.__name__} argument {name!r} must be {_describe(hint)}, got "
                f"{json.dumps(value)}"
            )


def _describe(annotation: Any) -> str:
    plain = typing.get_origin(annotation) is None and hasattr(annotation, "__name__")
    text = annotation.__name__ if plain else str(annotation)
    return text.replace("typing.", "").replace("collections.abc.", "")


def build_component(entry: Any, role: Role, label: str) -> Any:
    """Build a component from ``{"class": name, "config": {...}}`` read from ``label``.

    Raises:
        CheckpointError: the entry is malformed, the class unknown, or the config invalid.
    """
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("class"), str)
        or not isinstance(entry.get("config"), dict)
    ):
        raise CheckpointError(
            f"{label}: {role.value!r} must be an object with a 'class' name and a 'config' "
            f"object, got {json.dumps(entry)[:200]}"
        )
    name, config = entry["class"], entry["config"]
    try:
        cls = role.registry.get(name)
    except KeyError as err:
        raise CheckpointError(
            f"{label}: {err.args[0]}. If {name} is your own class, register it in "
            f"{role.registry_path} (import the module that does) before loading."
        ) from None
    where = f"{label}: {role.value} {name}"
    _check_arguments(cls, config, where)
    try:
        return cls(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: invalid config: {err}") from None
