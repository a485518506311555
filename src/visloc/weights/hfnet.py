"""HF-Net weights: save and load checkpoints, resolve the default student, ImageNet backbone weights.

An HF-Net checkpoint is visloc's model checkpoint (``visloc.weights.checkpoint``) with model
``"hfnet"`` and conf ``asdict(HFNetConf)``; the older ``{"format": "visloc-hfnet", ...}`` files (the
shipped default student) load the same way.

Which weights an ``hfnet`` extractor gets (``resolve_hfnet``): the ``weights`` path when given; else
the default student shipped in the package (``visloc/weights/hfnet_default.pt``, record
``"hfnet-default"``, its sha256 checked) when it exists; else an error, unless ``allow_random`` is set
(tests, benchmarks of speed), which builds a randomly initialised network of the default student's
architecture and logs a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from visloc.models.backbones import imagenet_to_features_state_dict
from visloc.models.hfnet import HFNet, HFNetConf
from visloc.weights.checkpoint import build_model, load_model_record, save_model
from visloc.weights.load import WeightsError, as_state_dict, safe_load
from visloc.weights.records import PACKAGE_DIR, WEIGHTS, check_shipped

logger = logging.getLogger(__name__)
MODEL = "hfnet"
DEFAULT_KEY = "hfnet-default"
#: the default student, shipped inside the package when it has been trained
DEFAULT_WEIGHTS = PACKAGE_DIR / WEIGHTS[DEFAULT_KEY].filename
WORLD_KEY = "hfnet-world"
#: the world student (the default's recipe on the world's train split), shipped beside it: pass
#: ``weights=<this path>`` to an ``hfnet`` extractor, after ``check_shipped(WORLD_KEY, WORLD_WEIGHTS)``
WORLD_WEIGHTS = PACKAGE_DIR / WEIGHTS[WORLD_KEY].filename
#: architecture of the default student (128-d local descriptors like its ALIKED teacher, 32 x 128 global)
DEFAULT_STUDENT_CONF = HFNetConf(descriptor_dim=128, global_dim=4096, global_feature_dim=128, num_clusters=32)


def save_hfnet(path: str | Path, model: HFNet) -> Path:
    """Write ``model`` (conf + float32 state dict on the CPU) to ``path`` atomically; returns ``path``."""
    return save_model(path, MODEL, model)


def load_hfnet(path: str | Path) -> HFNet:
    """Build the ``HFNet`` stored in ``path`` (``save_hfnet``'s format) in eval mode."""
    return build_model(load_model_record(path, MODEL, what="HF-Net checkpoint"), HFNetConf, HFNet)


def load_backbone_weights(model: HFNet, path: str | Path) -> HFNet:
    """Load a torchvision MobileNetV2 ImageNet state dict (user file) into ``model.backbone``; returns ``model``.

    The file must hold ``mobilenet_v2(width_mult=model.conf.width_mult).state_dict()`` (or a dict
    with that under ``"state_dict"``); the stem's RGB filters are summed for the gray input.
    """
    what = "backbone weights"
    sd = as_state_dict(safe_load(path, what), path, what)
    try:
        model.backbone.load_state_dict(imagenet_to_features_state_dict(sd, in_channels=1))
    except (ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not MobileNetV2 width {model.conf.width_mult} ImageNet weights "
                           f"({str(e).splitlines()[0][:100]})") from None
    return model


def resolve_hfnet(weights: str | Path | None, allow_random: bool = False) -> HFNet:
    """The network an extractor runs: ``weights``, else the shipped default, else random when allowed."""
    if weights is not None:
        return load_hfnet(weights)
    if DEFAULT_WEIGHTS.is_file():
        return load_hfnet(check_shipped(DEFAULT_KEY, DEFAULT_WEIGHTS))
    if not allow_random:
        raise WeightsError(f"hfnet: no weights given and no default student at {DEFAULT_WEIGHTS}; pass "
                           "weights=CHECKPOINT (from 'visloc train'), or allow_random=true for a random network")
    logger.warning("hfnet: no weights; using a RANDOMLY initialised network (allow_random=true)")
    with torch.random.fork_rng(devices=[]):  # the same random network in every process, caller's RNG untouched
        torch.manual_seed(0)
        return HFNet(DEFAULT_STUDENT_CONF).eval()
