"""Oxford / Paris ground truth: the reader lives in ``visloc.data.oxford_paris`` (training validates with it too).

Re-exported here for the evaluation code and its users.
"""

from visloc.data.oxford_paris import OxfordParisGnd, RestrictedUnpickler, load_gnd, restricted_load

__all__ = ["OxfordParisGnd", "RestrictedUnpickler", "load_gnd", "restricted_load"]
