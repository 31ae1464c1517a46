"""One mechanism for a component's config: the constructor's arguments, recorded when it is built.

A class that inherits :class:`Configurable` has its ``__init__`` wrapped once, at class
creation: every instance records the arguments it was built with (bound to the signature,
defaults included), and :meth:`Configurable.config` returns them, so that
``type(obj)(**obj.config())`` builds an equal object. This is what checkpoints save
(``{"class": name, "config": obj.config()}``). :class:`Component` adds value semantics derived
from the same record: ``repr``, ``==`` and ``hash``. No class writes these by hand.

Recorded values are canonical JSON-like data, so that an object built from a saved config is
equal to the one that was saved: enums become their value, tuples and tensors become lists;
other components stay objects (a :class:`~diffusionkit.ZeroTerminalSNRSchedule`'s ``base``).

Only the outermost constructor records: a subclass that calls ``super().__init__(...)`` with
other arguments records its own signature's arguments, not its parent's. Arguments passed
through ``**kwargs`` are recorded by their names; unnamed ``*args`` cannot be, and ``config()``
then says so.
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

__all__ = ["Component", "Configurable"]

_RECORD = "_constructor_config"
_UNNAMED = "*"  # marks a record that holds unnamed positional arguments


def _canonical(value: Any) -> Any:
    """``value`` as the data a JSON round trip gives back (components are left as objects)."""
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    signature = inspect.signature(init)
    kinds = {name: param.kind for name, param in signature.parameters.items()}

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if _RECORD not in self.__dict__:  # the outermost constructor records, not super()'s
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            record: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:  # without self
                if kinds[name] is inspect.Parameter.VAR_KEYWORD:  # **kwargs: by their names
                    record.update({k: _canonical(v) for k, v in value.items()})
                elif kinds[name] is inspect.Parameter.VAR_POSITIONAL:
                    if value:
                        record[_UNNAMED] = name
                else:
                    record[name] = _canonical(value)
            self.__dict__[_RECORD] = record
        init(self, *args, **kwargs)

    return __init__


class Configurable:
    """Records its constructor's arguments; :meth:`config` returns them.

    Subclasses write a plain ``__init__``; nothing else is needed for saving and loading.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _recording(init)  # type: ignore[method-assign]

    def config(self) -> dict[str, Any]:
        """The constructor arguments, such that ``type(self)(**self.config())`` is equal."""
        record = self.__dict__.get(_RECORD)
        if record is None:  # a class without an __init__ of its own
            return {}
        if _UNNAMED in record:
            raise TypeError(
                f"{type(self).__name__} was built with unnamed *{record[_UNNAMED]} arguments, "
                "which a config cannot rebuild: give its constructor named arguments"
            )
        return {k: _canonical(v) for k, v in record.items()}  # a copy: lists are fresh


class Component(Configurable):
    """A :class:`Configurable` with value semantics: two components with the same class and
    config are equal, hash alike and print alike (``LinearSchedule(timesteps=1000, ...)``)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Component)
        return self.config() == other.config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, _hashable(self.config())))
