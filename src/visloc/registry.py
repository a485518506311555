"""Name -> (conf, builder) registries for extractors, matchers and estimators.

A new method is a module that calls ``register`` at import time and an import line in its package's
``__init__``; nothing else needs to change. Building never touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from visloc.conf import apply_overrides

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered part: its default conf, its builder and a one-line description."""

    name: str
    conf: Any
    builder: Callable[[Any], T]
    description: str


class Registry(Generic[T]):
    """A typed name -> entry map; ``build(name, overrides)`` returns a ready object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, conf: Any, builder: Callable[[Any], T], description: str) -> None:
        """Add ``name``; registering a name twice is an error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, conf, builder, description)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name``; an unknown name raises a ``KeyError`` listing the known ones."""
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def conf(self, name: str, overrides: Mapping[str, Any] | Sequence[str] = ()) -> Any:
        """The default conf of ``name`` with ``overrides`` applied strictly."""
        conf = self.entry(name).conf
        return apply_overrides(conf, overrides) if overrides else conf

    def build(self, name: str, overrides: Mapping[str, Any] | Sequence[str] = ()) -> T:
        """Build ``name`` from its conf with ``overrides``."""
        return self.entry(name).builder(self.conf(name, overrides))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
