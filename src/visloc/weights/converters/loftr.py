"""A user's LoFTR checkpoint (``outdoor_ds.ckpt``, ``indoor_ds_new.ckpt``, a Lightning run's ``.ckpt``) -> networks.

LoFTR's released files are Lightning checkpoints whose ``state_dict`` keys carry the ``matcher.`` prefix
of the training module; kornia's copies hold the same keys. Both read here with ``weights_only=True``
(``visloc.weights.load.safe_load``): nothing is downloaded (kornia's ``LoFTR()`` default would).

- ``loftr_state_dict(path)``: the matcher's state dict, prefix removed.
- ``load_loftr_coarse(path, preset)``: its coarse level as :class:`~visloc.models.coarse_loftr.CoarseLoFTR`
  (backbone without the FPN branch, coarse transformer), e.g. the distillation teacher.
- ``load_loftr_full(path, variant)``: kornia's full ``LoFTR`` (coarse + fine) with these weights.
- Kolkir's Coarse_LoFTR_TRT students (``{"model_state_dict": ...}``) load with ``load_loftr_coarse(path, "s")``
  and ``temp_bug_fix=False`` (they were trained with the old encoding).
"""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from visloc.models.coarse_loftr import CoarseLoFTR, CoarseLoFTRConf, preset
from visloc.weights.load import WeightsError, as_state_dict, safe_load

#: kornia-config variants of the released LoFTR weights: (``temp_bug_fix``, what was trained on)
VARIANTS: dict[str, bool] = {"outdoor": False, "indoor": False, "indoor_new": True}
#: backbone modules that feed only LoFTR's fine level (dropped by the coarse network)
_FINE_PREFIXES = ("fine_preprocess.", "loftr_fine.", "fine_matching.")
_OUTCONV = re.compile(r"backbone\.layer\d+_outconv\d?\.")


def loftr_state_dict(path: str | Path, what: str = "LoFTR checkpoint") -> dict[str, torch.Tensor]:
    """The matcher's tensors of a LoFTR checkpoint, ``matcher.`` prefix removed (a new dict)."""
    raw = safe_load(path, what)
    if isinstance(raw, dict) and "model_state_dict" in raw and "state_dict" not in raw:
        raw = raw["model_state_dict"]  # Kolkir's training checkpoints
    sd = as_state_dict(raw, path, what)
    return {k.removeprefix("matcher."): v for k, v in sd.items()}


def _coarse_part(sd: dict[str, torch.Tensor], num_stages: int) -> dict[str, torch.Tensor]:
    keep = {}
    outconv = f"backbone.layer{num_stages}_outconv."
    for k, v in sd.items():
        if k.startswith(_FINE_PREFIXES):
            continue
        if _OUTCONV.match(k) and not k.startswith(outconv):  # the FPN's top-down branch
            continue
        keep[k] = v
    return keep


def load_loftr_coarse(path: str | Path, name_or_conf: str | CoarseLoFTRConf = "loftr-outdoor",
                      temp_bug_fix: bool | None = None) -> CoarseLoFTR:
    """The coarse level of a LoFTR checkpoint as a ``CoarseLoFTR`` (eval mode).

    Args:
        path: the checkpoint.
        name_or_conf: a preset name (``loftr-outdoor``, ``loftr-indoor``, ``s`` for Kolkir's students) or a conf.
        temp_bug_fix: override the preset's positional encoding (the weights do not record it).

    Raises:
        WeightsError: missing / unreadable file, or tensors that do not fit the architecture.
    """
    conf = preset(name_or_conf) if isinstance(name_or_conf, str) else name_or_conf
    if temp_bug_fix is not None:
        conf = replace(conf, temp_bug_fix=temp_bug_fix)
    sd = _coarse_part(loftr_state_dict(path), len(conf.block_dims))
    model = CoarseLoFTR(conf)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise WeightsError(f"{path}: does not fit Coarse LoFTR {conf.block_dims} / d_model {conf.d_model} "
                           f"({str(e).splitlines()[0][:100]})") from None
    return model.eval()


def load_loftr_full(path: str | Path, variant: str = "outdoor") -> Any:
    """Kornia's full ``LoFTR`` (coarse + fine) with the checkpoint's weights, built offline, eval mode.

    Args:
        path: the checkpoint.
        variant: ``outdoor`` / ``indoor`` (old positional encoding) or ``indoor_new`` (fixed).
    """
    from kornia.feature.loftr.loftr import LoFTR, default_cfg

    if variant not in VARIANTS:
        raise WeightsError(f"LoFTR variant {variant!r}: known {', '.join(VARIANTS)}")
    cfg = copy.deepcopy(default_cfg)
    cfg["coarse"]["temp_bug_fix"] = VARIANTS[variant]
    model = LoFTR(pretrained=None, config=cfg)
    try:
        model.load_state_dict(loftr_state_dict(path))
    except RuntimeError as e:
        raise WeightsError(f"{path}: not a LoFTR checkpoint ({str(e).splitlines()[0][:100]})") from None
    return model.eval()
