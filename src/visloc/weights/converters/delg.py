"""Convert the official DELG SavedModels (tensorflow/models ``delf``) into ``visloc.models.delg.DELG``.

The releases (``storage.googleapis.com/delf/<name>.tar.gz``) are TF2 SavedModels; only their
``variables/`` (a TensorBundle, read by ``tf_bundle.TFBundle`` without TensorFlow) is used. The exporter
keeps the model under ``_model`` (training checkpoints: ``model``). A SavedModel of a Keras model keys its
variables ``_model/variables/N/.ATTRIBUTES/VARIABLE_VALUE`` (shortest object-graph path), so names are
taken from ``TFBundle.object_paths``, which recovers the attribute paths from the stored object graph.
Below the first ``backbone`` / ``attention`` / ``autoencoder`` segment of that path (whatever comes before
it), the mapping is (``S`` = 2..5 the Keras stage, ``k`` = 0.. the block, letter ``a, b, c...``):

- ``backbone/conv1``, ``backbone/bn_conv1`` -> ``backbone.conv1``, ``backbone.bn1``;
- ``backbone/l{S}{letter k}/conv2a, bn2a, conv2b, bn2b, conv2c, bn2c`` ->
  ``backbone.layer{S-1}.{k}.conv1, bn1, conv2, bn2, conv3, bn3``;
- ``backbone/l{S}a/conv_shortcut, bn_shortcut`` -> ``backbone.layer{S-1}.0.downsample.0, downsample.1``;
- ``backbone/embedding_layer`` (dense) -> ``embedding`` (DELG);
- ``attention/conv1, bn_conv1, conv2`` -> ``attention.conv1, bn, conv2``;
- ``autoencoder/conv1, conv2`` -> ``autoencoder.conv1, conv2`` (DELG).

Conv ``kernel`` ``[kh, kw, in, out]`` (HWIO) -> ``weight`` ``[out, in, kh, kw]``; dense ``kernel``
``[in, out]`` -> ``weight`` ``[out, in]``; ``bias`` -> ``bias``; BN ``gamma, beta, moving_mean,
moving_variance`` -> ``weight, bias, running_mean, running_var``. Every variable under the three roots must
find its visloc parameter (else the checkpoint is another architecture: an error); everything else
(classifiers, the ArcFace scale, optimizer slots, the save counter) is left out and listed at debug level.
The R101 releases have no public TF2 training code; they are assumed to follow the same attribute names
with 23 blocks in stage 4 (``l4a`` .. ``l4w``): a missing name is reported, naming the visloc parameter.

Verified on exports written by TensorFlow 2.21 / tf-keras with the official module structure
(``tests/data/tf_bundle/make_fixtures.py``: the converted network matches TF's forward to ~1e-6), not on
the released files themselves, which cannot be downloaded here.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from visloc.weights.converters.tf_bundle import TFBundle
from visloc.weights.load import WeightsError

if TYPE_CHECKING:
    from visloc.models.delg import DELG

logger = logging.getLogger(__name__)

#: attention-score thresholds of the official extraction configs (``delf/python/delg/*config.pbtxt``)
OFFICIAL_THRESHOLDS: dict[str, float] = {
    "r50delg_gldv2clean_20200914": 454.6,
    "r101delg_gldv2clean_20200914": 357.48,
    "r50delg_gld_20200814": 175.0,
    "delg_gld_20200520": 175.0,
    "r101delg_gld_20200814": 166.1,
}
#: visloc preset of each release
OFFICIAL_PRESETS: dict[str, str] = {
    "r50delg_gldv2clean_20200914": "delg-r50", "r101delg_gldv2clean_20200914": "delg-r101",
    "r50delg_gld_20200814": "delg-r50", "delg_gld_20200520": "delg-r50", "r101delg_gld_20200814": "delg-r101",
}
ATTRIBUTES_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
ROOTS = ("backbone", "attention", "autoencoder")
#: Keras ResNet blocks per stage (conv2_x .. conv5_x) of the depths DELG's tf layout has
STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_PARAMS = {
    "conv": (("weight", "kernel"), ("bias", "bias")),
    "dense": (("weight", "kernel"), ("bias", "bias")),
    "bn": (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance")),
}


class ArchConf(Protocol):
    """What the conversion reads of a ``DELGConf``."""

    @property
    def depth(self) -> int: ...  # noqa: D102
    @property
    def layout(self) -> str: ...  # noqa: D102
    @property
    def local_dim(self) -> int: ...  # noqa: D102
    @property
    def global_dim(self) -> int: ...  # noqa: D102


def module_table(conf: ArchConf) -> list[tuple[str, str, str]]:
    """``(visloc module, TF attribute path, kind)`` of every module of ``conf``'s network (module docstring)."""
    if conf.layout != "tf" or conf.depth not in STAGE_BLOCKS:
        raise WeightsError(f"official DELG weights need the tf layout at depth 50 or 101, got layout "
                           f"{conf.layout!r} depth {conf.depth}")
    rows = [("backbone.conv1", "backbone/conv1", "conv"), ("backbone.bn1", "backbone/bn_conv1", "bn")]
    for stage, count in enumerate(STAGE_BLOCKS[conf.depth], start=2):
        for k in range(count):
            ours, theirs = f"backbone.layer{stage - 1}.{k}", f"backbone/l{stage}{string.ascii_lowercase[k]}"
            for i, letter in enumerate("abc", start=1):
                rows += [(f"{ours}.conv{i}", f"{theirs}/conv2{letter}", "conv"),
                         (f"{ours}.bn{i}", f"{theirs}/bn2{letter}", "bn")]
            if k == 0:
                rows += [(f"{ours}.downsample.0", f"{theirs}/conv_shortcut", "conv"),
                         (f"{ours}.downsample.1", f"{theirs}/bn_shortcut", "bn")]
    rows += [("attention.conv1", "attention/conv1", "conv"), ("attention.bn", "attention/bn_conv1", "bn"),
             ("attention.conv2", "attention/conv2", "conv")]
    if conf.local_dim:
        rows += [("autoencoder.conv1", "autoencoder/conv1", "conv"), ("autoencoder.conv2", "autoencoder/conv2", "conv")]
    if conf.global_dim:
        rows.append(("embedding", "backbone/embedding_layer", "dense"))
    return rows


def _relative(path: str) -> tuple[str, str] | None:
    """``(prefix, path below it)`` of an attribute path whose variable sits under one of ``ROOTS``."""
    if "/.OPTIMIZER_SLOT/" in path:
        return None
    if path.endswith(ATTRIBUTES_SUFFIX):
        path = path[: -len(ATTRIBUTES_SUFFIX)]
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part in ROOTS:
            return "/".join(parts[:i]), "/".join(parts[i:])
    return None


def tf_variables(bundle: TFBundle) -> dict[str, str]:
    """``{path below the model root: checkpoint key}`` of the bundle's model variables.

    Raises:
        WeightsError: two keys give the same path (two models in one checkpoint).
    """
    out: dict[str, str] = {}
    for key, path in bundle.object_paths().items():
        rel = _relative(path)
        if rel is None:
            continue
        if rel[1] in out:
            raise WeightsError(f"{bundle.prefix}: two variables for {rel[1]!r} ({out[rel[1]]!r} and {key!r})")
        out[rel[1]] = key
    return out


def _convert(bundle: TFBundle, key: str, kind: str, param: str) -> torch.Tensor:
    arr = bundle.read(key)
    if param == "weight" and kind == "conv":
        if arr.ndim != 4:
            raise WeightsError(f"{bundle.prefix}: {key!r} has shape {list(arr.shape)}, expected a conv kernel "
                               "[kh, kw, in, out]")
        arr = arr.transpose(3, 2, 0, 1)
    elif param == "weight" and kind == "dense":
        if arr.ndim != 2:
            raise WeightsError(f"{bundle.prefix}: {key!r} has shape {list(arr.shape)}, expected a dense kernel "
                               "[in, out]")
        arr = arr.T
    elif arr.ndim != 1:
        raise WeightsError(f"{bundle.prefix}: {key!r} has shape {list(arr.shape)}, expected a vector")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _hint(conf: ArchConf, module: str) -> str:
    if module.startswith("autoencoder."):
        return " (an export without the autoencoder? use a conf with local_dim=0)"
    if module == "embedding":
        return " (an export without the global head? use a conf with global_dim=0)"
    if conf.depth == 101 and ".layer3." in module:
        return " (an R50 checkpoint read as R101, or an R101 export with block names other than l4a..l4w?)"
    return ""


def delg_state_dict_from_tf(bundle: TFBundle, conf: ArchConf) -> dict[str, torch.Tensor]:
    """The visloc ``DELG`` state dict of an official DELG checkpoint (module docstring's table).

    Args:
        bundle: the release's ``variables/`` (``TFBundle.open``).
        conf: the network (``DELGConf``, tf layout): depth, and whether it has the autoencoder
            (``local_dim``) and the global head (``global_dim``).

    Returns:
        Float32 tensors for every conv, BN and dense parameter and BN statistic (not the
        ``num_batches_tracked`` counters nor ``gem.p``, which the network builds itself).

    Raises:
        WeightsError: a visloc parameter has no TF variable (the message names both), a TF variable under
            ``backbone`` / ``attention`` / ``autoencoder`` has no visloc parameter (another architecture:
            an R101 read as R50...), or a TF variable has an unexpected rank.
    """
    variables = tf_variables(bundle)
    if not variables:
        shown = ", ".join(n for n in bundle.names()[:3])
        raise WeightsError(f"{bundle.prefix}: no variable under backbone/, attention/ or autoencoder/ (not a DELF/DELG "
                           f"TF2 checkpoint? first keys: {shown})")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for module, path, kind in module_table(conf):
        for ours, theirs in _PARAMS[kind]:
            key = variables.get(f"{path}/{theirs}")
            if key is None:
                raise WeightsError(f"{bundle.prefix}: no TF variable {path}/{theirs} for visloc parameter "
                                   f"{module}.{ours}{_hint(conf, module)}")
            out[f"{module}.{ours}"] = _convert(bundle, key, kind, ours)
            used.add(key)
    extra = sorted(path for path, key in variables.items() if key not in used)
    if extra:
        raise WeightsError(f"{bundle.prefix}: TF variable {extra[0]} has no visloc parameter ({len(extra)} such; "
                           f"the checkpoint is another architecture than depth {conf.depth}, local_dim "
                           f"{conf.local_dim}, global_dim {conf.global_dim}: another preset?)")
    _log_unmapped(bundle, used)
    return out


def _log_unmapped(bundle: TFBundle, used: Iterable[str]) -> None:
    left = sorted(set(bundle.names()) - set(used))
    logger.debug("%s: %d TF tensors not converted (classifiers, optimizer, counters): %s", bundle.prefix,
                 len(left), ", ".join(left))


def release_name(path: str | Path) -> str | None:
    """The official release a path belongs to (a folder named like a key of ``OFFICIAL_THRESHOLDS``)."""
    for part in reversed(Path(path).resolve().parts):
        if part in OFFICIAL_THRESHOLDS:
            return part
    return None


def official_threshold(path: str | Path) -> float | None:
    """The official attention threshold of the release at ``path``, None if the path names none."""
    name = release_name(path)
    return OFFICIAL_THRESHOLDS[name] if name else None


def load_delg_tf(path: str | Path, preset: str | None = "delg-r50", conf: ArchConf | None = None) -> DELG:
    """A visloc ``DELG`` (eval mode) with the weights of the official release at ``path``.

    Args:
        path: the release folder, its ``variables/`` folder or the ``variables/variables`` prefix.
        preset: the visloc preset (``delg-r50``, ``delg-r101``); None: the release's (``OFFICIAL_PRESETS``,
            from the folder name), else ``delg-r50``.
        conf: a ``DELGConf`` instead of a preset.

    Raises:
        WeightsError: unreadable checkpoint, a missing variable or a shape that differs from the network's
            (both named).
    """
    from visloc.models.delg import DELG, DELGConf, resolve_preset

    if conf is None:
        name = release_name(path)
        conf = resolve_preset(preset or (OFFICIAL_PRESETS[name] if name else "delg-r50"))
    if not isinstance(conf, DELGConf):
        raise TypeError(f"load_delg_tf: conf must be a DELGConf, got {type(conf).__name__}")
    bundle = TFBundle.open(path)
    model = DELG(conf)
    expected = model.state_dict()
    converted = delg_state_dict_from_tf(bundle, conf)
    for key, value in converted.items():
        if key not in expected:
            raise WeightsError(f"{bundle.prefix}: converted {key!r}, which the visloc network has not")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(f"{bundle.prefix}: {key} has shape {list(value.shape)} in the checkpoint, the "
                               f"network's is {list(expected[key].shape)}")
    left = [k for k in expected if k not in converted and not k.endswith("num_batches_tracked") and k != "gem.p"]
    if left:
        raise WeightsError(f"{bundle.prefix}: no TF variable for visloc parameter {left[0]}")
    model.load_state_dict(converted, strict=False)
    return model.eval()


def convert_delg_tf(src: str | Path, dst: str | Path, preset: str | None = None,
                    attention_threshold: float | None = None) -> Path:
    """Write the official release at ``src`` as a visloc ``delg`` checkpoint ``dst`` (atomically).

    The checkpoint records (``extras``) the release's attention threshold (``attention_threshold``, else
    ``OFFICIAL_THRESHOLDS`` by folder name, else none) and DELG's input normalisation.
    """
    from visloc.weights.checkpoint import save_model

    model = load_delg_tf(src, preset)
    threshold = attention_threshold if attention_threshold is not None else official_threshold(src)
    extras: dict[str, object] = {"normalisation": "delg", "source": str(release_name(src) or Path(src).name)}
    if threshold is not None:
        extras["attention_threshold"] = float(threshold)
    return save_model(dst, "delg", model, extras=extras)


__all__ = ["OFFICIAL_PRESETS", "OFFICIAL_THRESHOLDS", "convert_delg_tf", "delg_state_dict_from_tf",
           "load_delg_tf", "module_table", "official_threshold", "release_name", "tf_variables"]
