"""Fit a matcher to the features it will match, from capabilities rather than names.

An extractor's entry declares its descriptor family (``capabilities(conf).descriptor``, e.g.
``"aliked-128"``); a feature matcher's entry declares the families its weights accept
(``capabilities(conf).accepts``, empty for any) and may adapt its conf to a family (LightGlue picks
``features=aliked`` or ``disk``). Feature files record the extractor that wrote them
(``{"name", "conf"}``), so a pipeline that matches a file can fit its matcher to it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from visloc.conf import parse_overrides
from visloc.errors import InputError
from visloc.registry import EXTRACTORS, MATCHERS

Overrides = Mapping[str, Any] | Sequence[str]


def _as_mapping(overrides: Overrides) -> dict[str, Any]:
    return dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))


def descriptor_family(extractor: str | None, conf: Any = None) -> str | None:
    """The descriptor family of a registered extractor with ``conf`` (its default conf when None)."""
    if extractor is None or extractor not in EXTRACTORS:
        return None
    return EXTRACTORS.capabilities(extractor, conf).descriptor


def family_of_record(record: str | None) -> str | None:
    """The descriptor family of a feature file's extractor record (JSON ``{"name", "conf"}``), or None."""
    if not record:
        return None
    data = json.loads(record)
    name = data.get("name")
    if name not in EXTRACTORS:
        return None
    conf = EXTRACTORS.conf(name, data.get("conf") or {})
    return EXTRACTORS.capabilities(name, conf).descriptor


def matcher_conf(matcher: str, overrides: Overrides = (), family: str | None = None) -> Any:
    """The conf of ``matcher`` with ``overrides``, fitted to descriptors of ``family``.

    Raises:
        InputError: the matcher's weights do not accept ``family`` (names the matcher and the family).
    """
    ov = _as_mapping(overrides)
    entry = MATCHERS.entry(matcher)
    conf = MATCHERS.conf(matcher, ov)
    if entry.adapt is not None:
        conf = entry.adapt(conf, family, frozenset(ov))
    accepts = entry.capabilities(conf).accepts
    if family is not None and accepts and family not in accepts:
        raise InputError(f"{matcher}: its weights take {', '.join(sorted(accepts))} descriptors, not {family}")
    return conf


def check_feature_matcher(matcher: str, what: str = "this command") -> None:
    """Raise ``InputError`` unless ``matcher`` is a feature matcher (image matchers need images)."""
    kind = MATCHERS.kind_of(matcher)
    if kind != "feature":
        raise InputError(f"{matcher}: an image matcher (it matches images, not stored features); {what} "
                         "needs a feature matcher: use 'visloc match-dense' for image matchers")
