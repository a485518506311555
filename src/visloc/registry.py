"""Registries of parts: name -> (kind, conf, builder, capabilities), loaded lazily.

Every configurable part is registered by name in one of these registries:

=================  ==========================================================================
``EXTRACTORS``     image -> ``types.Features``; kinds ``local``, ``global``, ``local+global``
``MATCHERS``       kinds ``feature`` (two images' features -> matches: NN, LightGlue) and
                   ``image`` (two images -> keypoints and matches: dense / detector-free)
``ESTIMATORS``     matched keypoints -> a geometric model and its inliers (kind ``two-view``)
``MODELS``         networks that export (kind ``onnx``): ``visloc export NAME``
``RECIPES``        training recipes (kind ``train``): ``visloc train CONFIG`` reads ``recipe:``
``REPRESENTATIONS``  event windows -> tensors (kind ``events``)
=================  ==========================================================================

``registry_index.INDEX`` maps each shipped name to the module that registers it, its kind and a
one-line description, so that listing parts imports nothing heavy, and ``entry(name)`` imports only
the module that owns ``name``. A part registered at run time by a user's module needs no index line.

An entry's ``capabilities(conf)`` says what a part does without building it (what it outputs, its
descriptor family, what it needs): pipelines ask that instead of comparing names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from visloc.conf import apply_overrides
from visloc.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Capabilities:
    """What a part does, computed from its conf without building it.

    Attributes:
        outputs: for extractors ``{"local"}``, ``{"global"}`` or both; for matchers ``{"matches"}``.
        descriptor: the descriptor family of an extractor's local features (``"aliked-128"``,
            ``"disk-128"``, ``"sift-128"``...); a feature matcher with trained weights declares the
            families it accepts in ``accepts``.
        accepts: descriptor families a feature matcher works with; empty means any.
        needs: resources the conf must point at before the part can run (``{"vocabulary"}``).
        weights: the files whose content decides the part's outputs (weights, vocabularies), resolved
            from the conf; evaluation caches are keyed on their digests.
    """

    outputs: frozenset[str] = frozenset()
    descriptor: str | None = None
    accepts: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()
    weights: tuple[str, ...] = ()


def _no_capabilities(conf: Any) -> Capabilities:
    return Capabilities()


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered part."""

    name: str
    kind: str
    conf: Any
    builder: Callable[[Any], T]
    description: str
    capabilities_of: Callable[[Any], Capabilities] = _no_capabilities
    #: ``adapt(conf, descriptor_family, user_keys) -> conf``: fit a matcher's conf to the features it
    #: will match (LightGlue's weights), leaving the keys the user set alone; None: nothing to fit
    adapt: Callable[[Any, str | None, frozenset[str]], Any] | None = None

    @property
    def conf_type(self) -> type:
        """The conf's dataclass."""
        return type(self.conf)

    def capabilities(self, conf: Any = None) -> Capabilities:
        """Capabilities of the part built from ``conf`` (default: the registered conf)."""
        return self.capabilities_of(self.conf if conf is None else conf)


@dataclass(frozen=True)
class IndexLine:
    """Where a shipped part is registered, without importing it."""

    module: str
    kind: str
    description: str


class Registry(Generic[T]):
    """A name -> entry map; ``build(name, overrides)`` returns a ready object.

    Args:
        what: what the registry holds, singular (``"extractor"``), for messages.
        kinds: the kinds its entries may have.
        index: name -> ``IndexLine`` of the shipped entries (imported on first use).
    """

    def __init__(self, what: str, kinds: Sequence[str], index: Mapping[str, IndexLine] | None = None) -> None:
        self.kind = what  # kept for callers that print "<kind>s:"
        self.what = what
        self.kinds = tuple(kinds)
        self._index: dict[str, IndexLine] = dict(index or {})
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, conf: Any, builder: Callable[[Any], T], description: str | None = None, *,
                 kind: str | None = None, capabilities: Callable[[Any], Capabilities] | None = None,
                 adapt: Callable[[Any, str | None, frozenset[str]], Any] | None = None) -> None:
        """Add ``name``; kind and description default to the index line. Registering twice is an error."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is already registered")
        line = self._index.get(name)
        kind = kind or (line.kind if line else None)
        description = description or (line.description if line else None)
        if kind is None or description is None:
            raise ValueError(f"{self.what} {name!r}: give kind and description (it has no registry_index line)")
        if kind not in self.kinds:
            raise ValueError(f"{self.what} {name!r}: kind {kind!r} is not one of {self.kinds}")
        if line is not None and line.kind != kind:
            raise ValueError(f"{self.what} {name!r}: kind {kind!r} differs from registry_index's {line.kind!r}")
        self._entries[name] = Entry(name, kind, conf, builder, description, capabilities or _no_capabilities, adapt)

    def names(self, kind: str | None = None) -> list[str]:
        """Registered and indexed names (of ``kind`` when given), sorted; imports nothing."""
        names = set(self._entries) | set(self._index)
        return sorted(n for n in names if kind is None or self.kind_of(n) == kind)

    def kind_of(self, name: str) -> str:
        """The kind of ``name``, from the index when it is not loaded yet."""
        if name in self._entries:
            return self._entries[name].kind
        if name in self._index:
            return self._index[name].kind
        raise self._unknown(name)

    def description_of(self, name: str) -> str:
        """The one-line description of ``name``, from the index when it is not loaded yet."""
        if name in self._entries:
            return self._entries[name].description
        if name in self._index:
            return self._index[name].description
        raise self._unknown(name)

    def _unknown(self, name: str) -> UnknownNameError:
        return UnknownNameError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name`` (importing its module); an unknown name raises ``UnknownNameError``."""
        if name not in self._entries and name in self._index:
            importlib.import_module(self._index[name].module)
            if name not in self._entries:
                raise RuntimeError(f"{self._index[name].module} did not register {self.what} {name!r}")
        if name not in self._entries:
            raise self._unknown(name)
        return self._entries[name]

    def conf(self, name: str, overrides: Mapping[str, Any] | Sequence[str] = ()) -> Any:
        """The default conf of ``name`` with ``overrides`` applied strictly."""
        conf = self.entry(name).conf
        return apply_overrides(conf, overrides) if overrides else conf

    def capabilities(self, name: str, conf: Any = None) -> Capabilities:
        """Capabilities of ``name`` with ``conf`` (default: its registered conf)."""
        return self.entry(name).capabilities(conf)

    def build(self, name: str, overrides: Mapping[str, Any] | Sequence[str] = ()) -> T:
        """Build ``name`` from its conf with ``overrides``."""
        return self.entry(name).builder(self.conf(name, overrides))

    def build_conf(self, name: str, conf: Any) -> T:
        """Build ``name`` from a resolved ``conf`` (of its conf type)."""
        entry = self.entry(name)
        if not isinstance(conf, entry.conf_type):
            raise TypeError(f"{self.what} {name!r}: expected a {entry.conf_type.__name__}, got {type(conf).__name__}")
        return entry.builder(conf)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._index


def _registry(what: str, kinds: Sequence[str]) -> Registry[Any]:
    from visloc.registry_index import INDEX

    return Registry(what, kinds, INDEX.get(what, {}))


EXTRACTORS: Registry[Any] = _registry("extractor", ("local", "global", "local+global"))
MATCHERS: Registry[Any] = _registry("matcher", ("feature", "image"))
ESTIMATORS: Registry[Any] = _registry("estimator", ("two-view",))
MODELS: Registry[Any] = _registry("model", ("onnx",))
RECIPES: Registry[Any] = _registry("recipe", ("train",))
REPRESENTATIONS: Registry[Any] = _registry("representation", ("events",))
#: every registry, in the order ``visloc list`` shows them
ALL: tuple[Registry[Any], ...] = (EXTRACTORS, MATCHERS, ESTIMATORS, MODELS, RECIPES, REPRESENTATIONS)

__all__ = ["ALL", "ESTIMATORS", "EXTRACTORS", "MATCHERS", "MODELS", "RECIPES", "REPRESENTATIONS", "Capabilities",
           "Entry", "IndexLine", "Registry"]
