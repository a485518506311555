"""ImageNet initialisation of DELF / DELG's ResNet backbone from a file the user gives (nothing is downloaded).

Two sources:

- torchvision's ``resnet50-*.pth`` (or any torchvision ResNet state dict): ``fc.*`` is dropped and the rest
  loads as is into the **torchvision** layout. Into the tf layout it is an error: that layout has the stride
  on the 1x1 conv, conv biases and BN eps 1e-3, so torchvision's weights would describe another network.
- Keras's ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` (Keras 2 weights h5: the root attribute
  ``layer_names``, per layer group the attribute ``weight_names``), in either of the two files that share
  that name:

  - the old one (fchollet's deep-learning-models v0.2, the file DELF's training expects): layers ``conv1``,
    ``bn_conv1``, ``res{S}{b}_branch{2a,2b,2c}`` / ``bn{S}{b}_branch...`` and the shortcut
    ``res{S}a_branch1`` / ``bn{S}a_branch1`` (``S`` = 2..5 the stage, ``b`` = a, b, c... the block);
    weights named ``<layer>_W``, ``_b``, ``_gamma``, ``_beta``, ``_running_mean``, ``_running_std`` by
    Keras 1 (``running_std`` holds the variance) or ``<layer>/kernel:0``... by Keras 2; BN eps 1e-3;
  - the new one (``keras.applications.ResNet50``): ``conv1_conv``, ``conv1_bn``,
    ``conv{S}_block{i}_{1,2,3}_{conv,bn}`` and the shortcut ``conv{S}_block1_0_{conv,bn}``; BN eps 1.001e-5.

  Both map to torchvision's names (``conv1``, ``bn1``, ``layer{S-1}.{i-1}.conv{1,2,3}`` / ``bn{1,2,3}``,
  ``layer{S-1}.0.downsample.{0,1}``); conv kernels are transposed HWIO -> OIHW. Into the **tf** layout the
  conv biases are kept. Into the **torchvision** layout (no conv bias) each bias is folded into the BN
  that follows it (``running_mean -= bias``, exact); there BN eps is 1e-5 instead of the file's 1e-3 /
  1.001e-5, and the stride sits on the 3x3 conv instead of the 1x1, so the initialisation is close to,
  not equal to, the network the weights were trained in (a logged note says so).

A backbone whose first conv takes other than RGB (Event-VPR's event representations, ``C`` channels) loads
with ``stem="mean"``: ``conv1``'s RGB filters become ``models.backbones.adapt_rgb_filters(w, C)`` (their mean
over RGB on every channel, scaled by ``3 / C``); the rest loads as above.

The stem (``conv1``, ``bn_conv1``) is loaded too. DELF's TF reference (``ResNet50.restore_weights``) only
walks the sub-layers that have inner layers (the residual blocks), so it silently leaves ``conv1`` and
``bn_conv1`` at their random initialisation; visloc does not.
"""

from __future__ import annotations

import logging
import re
import string
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from visloc.models.backbones import adapt_rgb_filters
from visloc.weights.load import WeightsError, as_state_dict, safe_load

logger = logging.getLogger(__name__)

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
SCHEMES = {"old": "old (res2a_branch2a)", "new": "new (conv2_block1_1_conv)"}
BN_EPS = {"old": 1e-3, "new": 1.001e-5}
_ROLES = {"kernel": "kernel", "w": "kernel", "bias": "bias", "b": "bias", "gamma": "gamma", "beta": "beta",
          "moving_mean": "mean", "running_mean": "mean", "moving_variance": "var", "running_variance": "var",
          "running_std": "var"}  # Keras 1's "running_std" held the variance
_ORDER = {"conv": ("kernel", "bias"), "bn": ("gamma", "beta", "mean", "var")}
_OLD_LAYER = re.compile(r"^(?:res|bn)(\d)([a-z])_branch(?:2[abc]|1)$")
_NEW_LAYER = re.compile(r"^conv(\d)_block(\d+)_[0-3]_(?:conv|bn)$")


def keras_table(scheme: str, depth: int = 50) -> list[tuple[str, str, str]]:
    """``(visloc backbone module, Keras layer, kind)`` of every conv and BN of a ResNet ``depth``."""
    old = scheme == "old"
    rows = [("conv1", "conv1" if old else "conv1_conv", "conv"), ("bn1", "bn_conv1" if old else "conv1_bn", "bn")]
    for stage, count in enumerate(STAGE_BLOCKS[depth], start=2):
        for k in range(count):
            ours, letter = f"layer{stage - 1}.{k}", string.ascii_lowercase[k]
            for j, branch in enumerate(("2a", "2b", "2c"), start=1):
                conv, bn = (f"res{stage}{letter}_branch{branch}", f"bn{stage}{letter}_branch{branch}") if old else \
                    (f"conv{stage}_block{k + 1}_{j}_conv", f"conv{stage}_block{k + 1}_{j}_bn")
                rows += [(f"{ours}.conv{j}", conv, "conv"), (f"{ours}.bn{j}", bn, "bn")]
            if k == 0:
                conv, bn = (f"res{stage}a_branch1", f"bn{stage}a_branch1") if old else \
                    (f"conv{stage}_block1_0_conv", f"conv{stage}_block1_0_bn")
                rows += [(f"{ours}.downsample.0", conv, "conv"), (f"{ours}.downsample.1", bn, "bn")]
    return rows


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _scheme(path: Path, names: list[str]) -> str:
    if "bn_conv1" in names or any(_OLD_LAYER.match(n) for n in names):
        return "old"
    if "conv1_conv" in names or any(_NEW_LAYER.match(n) for n in names):
        return "new"
    shown = ", ".join(names[:4]) or "none"
    raise WeightsError(f"{path}: not a Keras ResNet weights file: its layer names ({shown}...) look like neither "
                       "naming scheme (res2a_branch2a or conv2_block1_1_conv)")


def _role(layer: str, weight_name: str) -> str | None:
    leaf = re.sub(r"_\d+$", "", weight_name.split("/")[-1].split(":")[0])
    if leaf.startswith(layer + "_"):
        leaf = leaf[len(layer) + 1:]
    return _ROLES.get(leaf.lower())


def _layer_weights(path: Path, group: Any, layer: str, kind: str) -> dict[str, np.ndarray]:
    """``{role: array}`` of one layer, by weight name where recognisable, else by Keras's order."""
    names = [_text(n) for n in group.attrs.get("weight_names", [])]
    arrays = [np.asarray(group[n]) for n in names]
    found = [_role(layer, n) for n in names]
    roles = [r for r in found if r is not None]
    if len(roles) != len(names) or len(set(roles)) != len(roles):
        roles = list(_ORDER[kind][: len(names)])
    out = dict(zip(roles, arrays, strict=False))  # a surplus of weights is reported below
    needed = _ORDER[kind] if kind == "bn" else ("kernel",)
    if any(r not in out for r in needed) or len(names) > len(_ORDER[kind]):
        raise WeightsError(f"{path}: layer {layer} holds {len(names)} weights ({', '.join(names)}), expected "
                           f"{' + '.join(_ORDER[kind])}")
    return out


def _open_h5(path: Path) -> tuple[Any, Any]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError:
        raise WeightsError(f"{path}: cannot read as HDF5 (not a Keras weights .h5 or corrupt)") from None
    root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
    if "layer_names" not in root.attrs:
        f.close()
        raise WeightsError(f"{path}: HDF5 without a 'layer_names' attribute: not a Keras 2 weights file "
                           "(Keras 3 .weights.h5 files are not supported)")
    return f, root


def _check_extra(path: Path, names: list[str], used: set[str], scheme: str, depth: int) -> None:
    pattern = _OLD_LAYER if scheme == "old" else _NEW_LAYER
    extra = [n for n in names if pattern.match(n) and n not in used]
    if extra:
        raise WeightsError(f"{path}: Keras ResNet h5 in the {SCHEMES[scheme]} naming has layer {extra[0]}, which a "
                           f"ResNet-{depth} has not (another depth?)")


def keras_resnet_state_dict(path: str | Path, depth: int = 50, conv_bias: bool = True
                            ) -> tuple[dict[str, torch.Tensor], str]:
    """The backbone state dict (torchvision names) of a Keras ResNet h5, and its naming scheme.

    Args:
        path: the ``.h5`` (module docstring).
        depth: 50 or 101.
        conv_bias: keep the conv biases (tf layout); False folds them into the next BN (torchvision layout).

    Returns:
        ``({"conv1.weight": ..., "bn1.running_var": ..., "layer1.0.conv1.bias": ...}, "old" | "new")``.

    Raises:
        WeightsError: one line naming the file: not HDF5, not Keras, neither scheme, a missing layer (the
            first, with the scheme it looks like), an extra block layer, unexpected weights.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: Keras ResNet weights not found" if not p.exists() else f"{p}: not a file")
    if depth not in STAGE_BLOCKS:
        raise WeightsError(f"{p}: Keras ResNet weights fit a ResNet-50 or -101 backbone, not a ResNet-{depth}")
    f, root = _open_h5(p)
    try:
        names = [_text(n) for n in root.attrs["layer_names"]]
        scheme = _scheme(p, names)
        present, used = set(names), set()
        sd: dict[str, torch.Tensor] = {}
        last_bias: dict[str, torch.Tensor] = {}
        for module, layer, kind in keras_table(scheme, depth):
            if layer not in present:
                raise WeightsError(f"{p}: Keras ResNet h5 in the {SCHEMES[scheme]} naming lacks layer {layer} "
                                   f"(the first missing; visloc's {module} of a ResNet-{depth})")
            used.add(layer)
            w = _layer_weights(p, root[layer], layer, kind)
            if kind == "conv":
                kernel = w["kernel"]
                if kernel.ndim != 4:
                    raise WeightsError(f"{p}: layer {layer} kernel has shape {list(kernel.shape)}, expected HWIO")
                sd[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1),
                                                                              dtype=np.float32))
                bias = torch.from_numpy(np.asarray(w.get("bias", np.zeros(kernel.shape[3])), dtype=np.float32))
                if conv_bias:
                    sd[f"{module}.bias"] = bias
                last_bias[module] = bias
            else:
                for ours, role in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "mean"),
                                   ("running_var", "var")):
                    sd[f"{module}.{ours}"] = torch.from_numpy(np.asarray(w[role], dtype=np.float32).copy())
                if not conv_bias:  # BN(conv(x) + b) with mean m is BN(conv(x)) with mean m - b
                    sd[f"{module}.running_mean"] -= last_bias[_conv_of(module)]
        _check_extra(p, names, used, scheme, depth)
    finally:
        f.close()
    return sd, scheme


def _conv_of(bn: str) -> str:
    """The conv module before BN module ``bn`` (``layer1.0.bn2`` -> ``layer1.0.conv2``, ``downsample.1`` -> ``.0``)."""
    if bn.endswith("downsample.1"):
        return bn[: -len("1")] + "0"
    head, _, leaf = bn.rpartition(".")
    return f"{head}.conv{leaf[2:]}" if head else f"conv{leaf[2:]}"


def torchvision_resnet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict (``resnet50-*.pth``) without its classifier ``fc.*``."""
    sd = as_state_dict(safe_load(path, "torchvision ResNet weights"), path, "torchvision ResNet weights")
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _backbone(model: nn.Module) -> tuple[nn.Module, str, int]:
    """The ResNet of a DELG or an EventVPR (or the ResNetBackbone itself), its layout and depth."""
    backbone = getattr(model, "backbone", model)
    layout, depth = getattr(backbone, "layout", None), getattr(backbone, "depth", None)
    if not isinstance(backbone, nn.Module) or not isinstance(layout, str) or not isinstance(depth, int):
        raise TypeError(f"load_imagenet_backbone: {type(model).__name__} is not a DELG or a ResNetBackbone "
                        "(nor holds one as .backbone)")
    return backbone, layout, depth


def _load_checked(backbone: nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str) -> None:
    expected = {k: v for k, v in backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in sd]
    if missing:
        raise WeightsError(f"{path}: {what} lack {missing[0]} ({len(missing)} backbone keys missing: another "
                           "architecture or depth?)")
    extra = [k for k in sd if k not in expected and not k.endswith("num_batches_tracked")]
    if extra:
        raise WeightsError(f"{path}: {what} hold {extra[0]}, which the backbone has not (another depth?)")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise WeightsError(f"{path}: {what}: {k} has shape {list(sd[k].shape)}, the backbone's is {list(v.shape)}")
    backbone.load_state_dict({k: sd[k] for k in expected}, strict=False)


def _adapt_stem(backbone: nn.Module, sd: dict[str, torch.Tensor], path: Path, what: str) -> dict[str, torch.Tensor]:
    """``sd`` with ``conv1.weight``'s RGB filters adapted to the backbone's first conv (``stem="mean"``)."""
    conv1 = getattr(backbone, "conv1", None)
    weight = sd.get("conv1.weight")
    if not isinstance(conv1, nn.Conv2d) or weight is None or weight.dim() != 4 or weight.shape[1] != 3:
        shape = list(weight.shape) if weight is not None else None
        raise WeightsError(f"{path}: {what}: conv1.weight is {shape}, expected RGB filters [64, 3, 7, 7] to adapt")
    return {**sd, "conv1.weight": adapt_rgb_filters(weight, conv1.in_channels)}


def load_imagenet_backbone(model: nn.Module, path: str | Path, stem: Literal["rgb", "mean"] = "rgb") -> str:
    """Load ImageNet weights from ``path`` into the backbone of ``model`` (a DELG, an EventVPR or a ResNetBackbone).

    The file type is detected (HDF5: Keras, else a torch file); the target layout and depth are the
    backbone's (module docstring for what each combination does). ``stem="rgb"`` loads ``conv1`` as it
    is; ``"mean"`` adapts its RGB filters to the backbone's input channels (``adapt_rgb_filters``).

    Returns:
        What was loaded: ``"torchvision"``, ``"keras-old"`` or ``"keras-new"``.

    Raises:
        WeightsError: a file that does not fit (one line naming it; for Keras files the scheme it looks
            like and the first missing layer); torchvision weights into the tf layout.
    """
    import h5py

    backbone, layout, depth = _backbone(model)
    p = Path(path)
    if p.is_file() and h5py.is_hdf5(p):
        sd, scheme = keras_resnet_state_dict(p, depth, conv_bias=layout == "tf")
        what = f"Keras ResNet weights ({SCHEMES[scheme]} naming)"
        _load_checked(backbone, _adapt_stem(backbone, sd, p, what) if stem == "mean" else sd, p, what)
        target_eps = 1e-3 if layout == "tf" else 1e-5
        logger.info("%s: Keras ImageNet weights (%s naming, BN eps %g) loaded into the %s layout (BN eps %g%s)",
                    p, SCHEMES[scheme], BN_EPS[scheme], layout, target_eps,
                    "; conv biases folded into the BNs, stride on the 3x3 instead of the 1x1"
                    if layout == "torchvision" else "")
        return f"keras-{scheme}"
    if layout == "tf":
        raise WeightsError(f"{p}: torchvision ResNet weights fit the torchvision layout only (stride on the 3x3 "
                           "conv, no conv bias, BN eps 1e-5); use a torchvision-layout preset (delg-r50-tv) or the "
                           "Keras resnet50 ..._notop.h5 for the tf layout")
    sd, what = torchvision_resnet_state_dict(p), "torchvision ResNet weights"
    _load_checked(backbone, _adapt_stem(backbone, sd, p, what) if stem == "mean" else sd, p, what)
    return "torchvision"


__all__ = ["BN_EPS", "SCHEMES", "keras_resnet_state_dict", "keras_table", "load_imagenet_backbone",
           "torchvision_resnet_state_dict"]
