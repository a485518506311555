"""Shared pieces of the batch pipelines: device selection, conf records (job summaries: ``io.jobs``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from visloc.conf import conf_to_dict
from visloc.errors import InputError


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
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: not a device; expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu (or leave it unset)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


def conf_record(name: str, conf: Any) -> str:
    """JSON record of a part's registered name and resolved conf, stored in file attributes."""
    return json.dumps({"name": name, "conf": conf_to_dict(conf)}, sort_keys=True)
