"""HF-Net checkpoints: save, load, resolve the default, and ImageNet backbone weights from a user path.

A visloc HF-Net checkpoint is ``torch.save({"format": "visloc-hfnet", "conf": asdict(HFNetConf),
"state_dict": ...})``, loaded with ``torch.load(weights_only=True)``; the conf is read strictly
(``visloc.conf.load_conf``), so a checkpoint from another architecture is a one-line error.

Which weights an ``hfnet`` extractor gets (``resolve_hfnet``): the ``weights`` path when given; else
the default student shipped in the package (``visloc/weights/hfnet_default.pt``) when it exists; else
an error, unless ``allow_random`` is set (tests, benchmarks of speed), which builds a randomly
initialised network of the default student's architecture and logs a warning.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from visloc.conf import ConfError, load_conf
from visloc.features.weights import WeightsError, sha256_of
from visloc.io.atomic import atomic_path
from visloc.models.backbones import imagenet_to_features_state_dict
from visloc.models.hfnet import HFNet, HFNetConf

logger = logging.getLogger(__name__)
FORMAT = "visloc-hfnet"
#: the default student, shipped inside the package when it has been trained
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "hfnet_default.pt"
#: architecture of the default student (128-d local descriptors like its ALIKED teacher, 32 x 128 global)
DEFAULT_STUDENT_CONF = HFNetConf(descriptor_dim=128, global_dim=4096, global_feature_dim=128, num_clusters=32)


def save_hfnet(path: str | Path, model: HFNet) -> Path:
    """Write ``model`` (conf + float32 state dict on the CPU) to ``path`` atomically; returns ``path``."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "conf": asdict(model.conf), "state_dict": state}, tmp)
    return Path(path)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: HF-Net checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt files
        raise WeightsError(f"{path}: cannot load HF-Net checkpoint ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not isinstance(ckpt.get("state_dict"), dict):
        raise WeightsError(f"{path}: not a visloc HF-Net checkpoint (expected format={FORMAT!r}, conf, state_dict)")
    return ckpt


def load_hfnet(path: str | Path) -> HFNet:
    """Build the ``HFNet`` stored in ``path`` (``save_hfnet``'s format) in eval mode."""
    path = Path(path)
    ckpt = _read(path)
    try:
        conf = load_conf(HFNetConf, ckpt.get("conf") or {}, where=f"{path}: conf")
    except ConfError as e:
        raise WeightsError(str(e)) from None
    model = HFNet(conf)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise WeightsError(f"{path}: state_dict does not fit its conf ({str(e).splitlines()[0][:100]})") from None
    logger.info("HF-Net weights from %s (sha256 %s)", path, sha256_of(path))
    return model.eval()


def load_backbone_weights(model: HFNet, path: str | Path) -> HFNet:
    """Load a torchvision MobileNetV2 ImageNet state dict (user file) into ``model.backbone``; returns ``model``.

    The file must hold ``mobilenet_v2(width_mult=model.conf.width_mult).state_dict()`` (or a dict
    with that under ``"state_dict"``); the stem's RGB filters are summed for the gray input.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: backbone weights file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot load backbone weights ({e.__class__.__name__}: {str(e)[:80]})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(sd).__name__}")
    try:
        model.backbone.load_state_dict(imagenet_to_features_state_dict(sd, in_channels=1))
    except (ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not MobileNetV2 width {model.conf.width_mult} ImageNet weights "
                           f"({str(e).splitlines()[0][:100]})") from None
    return model


def resolve_hfnet(weights: str | None, allow_random: bool = False) -> HFNet:
    """The network an extractor runs: ``weights``, else the shipped default, else random when allowed."""
    if weights is not None:
        return load_hfnet(weights)
    if DEFAULT_WEIGHTS.is_file():
        return load_hfnet(DEFAULT_WEIGHTS)
    if not allow_random:
        raise WeightsError(f"hfnet: no weights given and no default student at {DEFAULT_WEIGHTS}; pass "
                           "weights=CHECKPOINT (from 'visloc train'), or allow_random=true for a random network")
    logger.warning("hfnet: no weights; using a RANDOMLY initialised network (allow_random=true)")
    with torch.random.fork_rng(devices=[]):  # the same random network in every process, caller's RNG untouched
        torch.manual_seed(0)
        return HFNet(DEFAULT_STUDENT_CONF).eval()
