"""Name -> class tables for the pluggable parts, used at the serialization boundary.

Objects are the API; names appear only where configuration is text (``config.json``, the
command line). Each table maps a class name (and, for samplers, a short alias such as
``"ddpm"``) to its class; unknown names raise an error that lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A table of classes of one kind, looked up by class name or alias.

    Args:
        kind: what the table holds, for error messages (e.g. ``"sampler"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T], *aliases: str) -> type[T]:
        """Add ``cls`` under its class name and ``aliases``; returns ``cls`` (decorator-friendly)."""
        for name in (cls.__name__, *aliases):
            existing = self._classes.get(name)
            if existing is not None and existing is not cls:
                raise ValueError(f"{self.kind} name {name!r} is already taken by {existing}")
            self._classes[name] = cls
        return cls

    def decorator(self, *aliases: str) -> Callable[[type[T]], type[T]]:
        """``@registry.decorator("alias")`` form of :meth:`register`."""
        return lambda cls: self.register(cls, *aliases)

    def get(self, name: str) -> type[T]:
        """The class registered as ``name``; ``KeyError`` listing the valid names otherwise."""
        try:
            return self._classes[name]
        except KeyError:
            valid = ", ".join(sorted(self._classes))
            raise KeyError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._classes)

    def build(self, name: str, config: dict[str, Any] | None = None) -> T:
        """Instantiate the class registered as ``name`` with keyword arguments ``config``."""
        cls = self.get(name)
        try:
            return cls(**(config or {}))
        except TypeError as err:
            raise ValueError(f"invalid config for {self.kind} {name!r}: {err}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._classes
