"""Matchers behind one contract (``matching.base``), registered by name in ``MATCHERS``.

Importing this package imports no matcher: ``MATCHERS.entry(name)`` imports the module that
registers ``name`` (``visloc.registry_index``).
"""

from visloc.matching.base import MATCHERS, Matcher

__all__ = ["MATCHERS", "Matcher"]
