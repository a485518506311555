"""Shared pieces of the batch pipelines: device selection, conf records (job summaries: ``io.jobs``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from visloc.conf import conf_to_dict


def conflicting_conf(out: Path, attr: str, record: str) -> str | None:
    """Name of the part whose different conf ``out`` already records under ``attr``, else None."""
    from visloc.io.features_h5 import read_attrs

    existing = read_attrs(out).get(attr)
    if existing is not None and json.loads(existing) != json.loads(record):
        return str(json.loads(existing)["name"])
    return None


def pick_device(device: str | None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def conf_record(name: str, conf: Any) -> str:
    """JSON record of a part's registered name and resolved conf, stored in file attributes."""
    return json.dumps({"name": name, "conf": conf_to_dict(conf)}, sort_keys=True)
