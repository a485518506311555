"""Sparse matchers behind one contract (see ``base``), registered by name."""

from visloc.matching import lightglue, nearest_neighbor  # noqa: F401  (registration)
from visloc.matching.base import MATCHERS, Matcher

__all__ = ["MATCHERS", "Matcher"]
