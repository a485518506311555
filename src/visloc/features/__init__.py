"""Feature extractors behind one contract (``features.base``), registered by name in ``EXTRACTORS``.

Importing this package imports no extractor: ``EXTRACTORS.entry(name)`` imports the module that
registers ``name`` (``visloc.registry_index``).
"""

from visloc.features.base import EXTRACTORS, Extractor

__all__ = ["EXTRACTORS", "Extractor"]
