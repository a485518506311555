"""Local feature extractors behind one contract (see ``base``), registered by name."""

from visloc.features import hfnet, hfnet_onnx, learned, opencv, vlad  # noqa: F401  (registration)
from visloc.features.base import EXTRACTORS, Extractor

__all__ = ["EXTRACTORS", "Extractor"]
