"""visloc's model checkpoint format: the registered model name, its architecture conf and its weights.

A checkpoint is ``torch.save({"format": "visloc-model", "model": NAME, "conf": asdict(conf),
"state_dict": {...}})``: plain containers and tensors only, so it loads with ``weights_only=True``
(``visloc.weights.load.safe_load``). The conf is the model's frozen dataclass (``model.conf``), read
back strictly with ``visloc.conf.load_conf``, so a checkpoint of another architecture is a one-line
error. Older HF-Net checkpoints (``{"format": "visloc-hfnet", "conf", "state_dict"}``, the format
of the shipped default student) are read as model ``"hfnet"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from visloc.conf import ConfError, load_conf
from visloc.io.atomic import atomic_path
from visloc.weights.load import WeightsError, as_state_dict, safe_load
from visloc.weights.records import sha256_of

logger = logging.getLogger(__name__)
FORMAT = "visloc-model"
#: earlier single-model formats still read: format -> model name
LEGACY_FORMATS = {"visloc-hfnet": "hfnet"}

C = TypeVar("C")
M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class ModelRecord:
    """A checkpoint as read from ``path``: model name, raw conf dict and CPU state dict."""

    path: Path
    model: str
    conf: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    extras: dict[str, Any] = field(default_factory=dict)


def save_model(path: str | Path, name: str, model: nn.Module, extras: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (its dataclass ``conf`` and its state dict, on the CPU) to ``path`` atomically.

    Args:
        path: output file; written to a temporary file first, then renamed.
        name: the registered model name (``"hfnet"``...), checked again at load.
        model: an ``nn.Module`` with a frozen dataclass ``conf`` describing its architecture.
        extras: what the weights decide besides the architecture (plain numbers and strings: a DELG
            model's attention threshold and input normalisation), read back as ``ModelRecord.extras``.

    Returns:
        ``path``.
    """
    conf = getattr(model, "conf", None)
    if conf is None or not is_dataclass(conf) or isinstance(conf, type):
        raise TypeError(f"save_model: {type(model).__name__} has no dataclass 'conf' to record")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "model": name, "conf": asdict(conf), "state_dict": state,
                    "extras": dict(extras or {})}, tmp)
    return Path(path)


def load_model_record(path: str | Path, expected_model: str, what: str | None = None) -> ModelRecord:
    """Read the checkpoint ``path`` and check that it holds model ``expected_model``.

    Args:
        path: a file written by ``save_model`` (or an older single-model format).
        expected_model: the registered model name the caller builds.
        what: how the messages call the file (default ``"<expected_model> checkpoint"``).

    Raises:
        WeightsError: the file is missing or corrupt, is not a visloc checkpoint, or holds another model.
    """
    p = Path(path)
    what = what or f"{expected_model} checkpoint"
    ckpt = safe_load(p, what)
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt == FORMAT:
        model = ckpt.get("model")
    elif fmt in LEGACY_FORMATS:
        model = LEGACY_FORMATS[fmt]
    else:
        raise WeightsError(f"{p}: not a visloc model checkpoint (expected format={FORMAT!r} with model, conf, "
                           "state_dict)")
    if model != expected_model:
        raise WeightsError(f"{p}: a checkpoint of model {model!r}, expected {expected_model!r}")
    conf = ckpt.get("conf") or {}
    if not isinstance(conf, dict):
        raise WeightsError(f"{p}: conf must be a mapping, got {type(conf).__name__}")
    state = as_state_dict(ckpt.get("state_dict"), p, what, unwrap=False)
    extras = ckpt.get("extras") or {}
    if not isinstance(extras, dict):
        raise WeightsError(f"{p}: extras must be a mapping, got {type(extras).__name__}")
    return ModelRecord(p, str(model), conf, state, extras)


def halve_checkpoint(src: str | Path, dst: str | Path, expected_model: str) -> Path:
    """Write ``src``'s checkpoint to ``dst`` with its floating tensors in float16 (half the file), atomically.

    What a model ships as when its float32 file would pass the project's 50 MB limit. Integer buffers
    (BatchNorm's ``num_batches_tracked``) stay as they are. ``build_model`` loads the result into the float32
    model (``load_state_dict`` casts), which then computes with the float16-rounded weights.

    Raises:
        WeightsError: ``src`` is not a checkpoint of ``expected_model`` (``load_model_record``).
    """
    rec = load_model_record(src, expected_model)
    state = {k: v.half() if v.is_floating_point() else v for k, v in rec.state_dict.items()}
    with atomic_path(dst) as tmp:
        torch.save({"format": FORMAT, "model": rec.model, "conf": rec.conf, "state_dict": state,
                    "extras": rec.extras}, tmp)
    return Path(dst)


def build_model(record: ModelRecord, conf_type: type[C], factory: Callable[[C], M]) -> M:
    """``factory(conf)`` with the record's weights loaded, in eval mode.

    Args:
        record: from ``load_model_record``.
        conf_type: the model's conf dataclass; the record's conf is read strictly (unknown keys fail).
        factory: builds the (random) model from its conf.

    Raises:
        WeightsError: the conf does not parse, or the state dict does not fit the model.
    """
    try:
        conf = load_conf(conf_type, record.conf, where=f"{record.path}: conf")
    except ConfError as e:
        raise WeightsError(str(e)) from None
    model = factory(conf)
    try:
        model.load_state_dict(record.state_dict)
    except RuntimeError as e:
        raise WeightsError(f"{record.path}: state_dict does not fit its conf "
                           f"({str(e).splitlines()[0][:100]})") from None
    logger.info("%s weights from %s (sha256 %s)", record.model, record.path, sha256_of(record.path))
    return model.eval()
