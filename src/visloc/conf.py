"""Typed, frozen configurations: strict loading from mappings and YAML, dot-overrides.

Every configurable part declares a frozen dataclass. ``load_conf`` builds one from a mapping and
raises on unknown keys, so a typo never falls back to a default silently; ``apply_overrides``
applies ``key.sub=value`` strings as the CLI receives them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from visloc.errors import VislocError

C = TypeVar("C")



class ConfError(VislocError, ValueError):
    """A configuration that does not fit its dataclass (unknown key, wrong type)."""


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    """Check or convert a scalar leaf (``int``, ``float``, ``str``, ``bool``)."""
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfError(f"{where}: expected float, got {value!r}")
    if tp in (int, str, bool) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _coerce(value: Any, tp: Any, where: str) -> Any:
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfError(f"{where}: None is not allowed (expected {tp})")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return load_conf(tp, value, where=where)
    origin = typing.get_origin(tp)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfError(f"{where}: expected a sequence, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    return _coerce_scalar(value, tp, where)


def load_conf(cls: type[C], data: Mapping[str, Any] | None = None, where: str = "conf") -> C:
    """Build the frozen dataclass ``cls`` from ``data``; unknown keys raise ``ConfError``."""
    data = dict(data or {})
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_conf: expected a dataclass type, got {cls!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def conf_to_dict(conf: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a dataclass conf, ready for YAML or JSON."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return convert(conf)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_overrides(conf: C, overrides: Mapping[str, Any] | Sequence[str]) -> C:
    """Return a new conf with ``overrides`` (a mapping or ``key=value`` strings) applied strictly."""
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    return load_conf(type(conf), merge(conf_to_dict(conf), overrides))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a clear one-line error names the file otherwise."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfError(f"{path}: is a directory, not a YAML config file") from None
    except UnicodeDecodeError as e:
        raise ConfError(f"{path}: not UTF-8 text (byte {e.start}); a YAML config must be UTF-8") from None
    except OSError as e:
        raise ConfError(f"{path}: cannot read the config file ({e.strerror or e.__class__.__name__})") from None
    except yaml.YAMLError as e:
        raise ConfError(f"{path}: invalid YAML ({e.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfError(f"{path}: expected a mapping at the top level")
    return data
