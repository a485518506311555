"""Load checkpoint files safely: ``torch.load(map_location="cpu", weights_only=True)`` behind one-line errors.

Every reader of a torch file in visloc goes through ``safe_load``, so that a missing file, a corrupt
file and a file that ``weights_only`` refuses (it holds pickled Python objects, not only tensors and
plain containers) each give one ``WeightsError`` naming the file and the problem.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from visloc.errors import VislocError

# torch's WeightsUnpickler names the first class it refuses: "Unsupported global: GLOBAL mod.Class was not ..."
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class WeightsError(VislocError, FileNotFoundError):
    """Weights that are missing, corrupt or not what their record says."""


def _first_line(e: BaseException, limit: int = 80) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{e.__class__.__name__}: {lines[0][:limit]}" if lines else e.__class__.__name__


def safe_load(path: str | Path, what: str) -> Any:
    """The object stored in the torch file ``path``, loaded on the CPU with ``weights_only=True``.

    Args:
        path: a file written by ``torch.save``.
        what: what the file should hold, for the messages (e.g. ``"HF-Net checkpoint"``).

    Raises:
        WeightsError: the file is missing, corrupt (not a torch file, truncated), or holds
            non-tensor objects that ``weights_only=True`` refuses to unpickle.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: {what} not found" if not p.exists() else f"{p}: {what} is not a file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused:
            raise WeightsError(f"{p}: {what} holds non-tensor objects ({refused.group(1)}), which "
                               "torch.load(weights_only=True) refuses to unpickle") from None
        raise WeightsError(f"{p}: cannot load {what}: corrupt or not a torch file") from None
    except Exception as e:  # torch raises several types (EOFError, RuntimeError...) for corrupt files
        raise WeightsError(f"{p}: cannot load {what}: corrupt or not a torch file ({_first_line(e)})") from None


def as_state_dict(obj: Any, path: str | Path, what: str, unwrap: bool = True) -> dict[str, torch.Tensor]:
    """``obj`` (or ``obj["state_dict"]`` when ``unwrap``) checked to be a dict of tensors.

    Raises:
        WeightsError: naming ``path`` and ``what``, when it is not.
    """
    if unwrap and isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: {what}: expected a state dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: {what}: expected a state dict of tensors, {bad[0]!r} is "
                           f"{type(obj[bad[0]]).__name__}")
    return obj


def load_state_dict(key: str, path: str | Path | None = None) -> dict[str, Any]:
    """The state dict of weights ``key`` (the user's ``path``, else the checked shipped file), on the CPU."""
    # records imports WeightsError from this module, so it is imported here, not at the top
    from visloc.weights.records import resolve_weights

    p = resolve_weights(key, path)
    sd = safe_load(p, f"weights for {key!r}")
    if not isinstance(sd, dict):
        raise WeightsError(f"{p}: expected a state dict, got {type(sd).__name__}")
    return sd
