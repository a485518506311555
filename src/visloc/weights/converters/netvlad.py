"""Loaders for user-supplied official NetVLAD weights into :class:`visloc.models.netvlad_vgg.NetVLADVGG16`.

Two sources, both read from a path the user gives (nothing is downloaded):

- The authors' MatConvNet model (e.g. ``vd16_pitts30k_conv5_3_vlad_preL2_intra_white``) converted
  to plain structs by netvlad_tf_open's ``net_class2struct.m`` (the ``*_struct.mat`` files hloc
  uses). ``net.layers`` holds, in order: VGG16 ``conv``/``relu``/``pool`` layers up to conv5_3, a
  ``normalize`` layer (preL2), the ``custom`` layer ``vlad:core`` with weights
  ``{assignment filters 1x1xDxK, -centroids DxK}`` (no assignment bias), an intra-normalisation,
  ``postL2``, the ``conv`` layer ``WPCA`` with weights ``{1x1x(D*K)xG filters, G biases}``, and
  ``finalL2``; ``net.meta.normalization.averageImage`` is the RGB mean in 0-255 units.
  MatConvNet convolutions are correlations with HxWxCinxCout filters, so they map to PyTorch by a
  transpose only (no flip). The VLAD vector the WPCA layer reads is flattened dimension-major
  (``d * K + k``) while visloc's NetVLAD is cluster-major (``k * D + d``), so the WPCA rows are
  permuted to match.
- pytorch-NetVlad checkpoints (``torch.save({"state_dict": ...})``) with keys ``encoder.<i>.*``
  (VGG16 features), ``pool.conv.weight`` / ``pool.conv.bias`` (the bias only with vladv2),
  ``pool.centroids`` and optionally Patch-NetVLAD's ``WPCA.0.weight`` / ``WPCA.0.bias``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import torch
from torch import nn

from visloc.models.netvlad_vgg import VGG_DIM, NetVLADVGG16
from visloc.weights.load import WeightsError, safe_load
from visloc.weights.records import PYTORCH_NETVLAD_INPUT, sha256_of

logger = logging.getLogger(__name__)

def _check_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: NetVLAD weights file not found" if not p.exists() else f"{p}: not a file")
    logger.info("NetVLAD weights from %s (sha256 %s)", p, sha256_of(p))
    return p


def _tensor(p: Path, what: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """``value`` as a float32 tensor of ``shape``, else a WeightsError naming the file and ``what``."""
    arr = np.asarray(value)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise WeightsError(f"{p}: {what} is not a numeric array")
    if arr.size != int(np.prod(shape)) or tuple(s for s in arr.shape if s != 1) != tuple(s for s in shape if s != 1):
        raise WeightsError(f"{p}: {what} has shape {arr.shape}, expected {shape}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(shape))


def _conv_layers(model: NetVLADVGG16) -> list[nn.Conv2d]:
    return [m for m in model.encoder if isinstance(m, nn.Conv2d)]


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """``conv.bias``; every conv of :class:`NetVLADVGG16`'s encoder is built with one."""
    if conv.bias is None:
        raise RuntimeError(f"NetVLADVGG16 encoder conv {conv} has no bias")
    return conv.bias


# --- MatConvNet ------------------------------------------------------------------------------------


def _layer_weights(p: Path, layer: Any, count: int) -> list[Any]:
    name = getattr(layer, "name", "?")
    w = getattr(layer, "weights", None)
    if w is None or isinstance(w, np.ndarray) and w.dtype != object or len(w) != count:
        raise WeightsError(f"{p}: layer {name!r} must hold {count} weight arrays")
    return list(w)


def _read_mat_net(p: Path) -> tuple[list[Any], Any, Any, Any]:
    """The conv layers, the VLAD layer, the WPCA layer (or None) and the meta struct of ``net``."""
    try:
        mat = scipy.io.loadmat(str(p), struct_as_record=False, squeeze_me=True)
    except Exception as e:  # scipy raises several types for files that are not .mat
        raise WeightsError(f"{p}: cannot read as a .mat file ({e.__class__.__name__}: {str(e)[:80]})") from None
    net = mat.get("net")
    layers = getattr(net, "layers", None)
    if net is None or layers is None or not hasattr(net, "meta"):
        raise WeightsError(f"{p}: expected a struct 'net' with fields 'layers' and 'meta' "
                           "(netvlad_tf_open's net_class2struct format)")
    layers = list(np.atleast_1d(layers))
    names = [str(getattr(ly, "name", "")) for ly in layers]
    types = [str(getattr(ly, "type", "")) for ly in layers]
    vlad = [ly for ly, n in zip(layers, names, strict=True) if n.replace(":", "_") == "vlad_core"]
    if len(vlad) != 1:
        raise WeightsError(f"{p}: expected one layer named 'vlad:core', found {len(vlad)}")
    wpca = [ly for ly, n in zip(layers, names, strict=True) if n == "WPCA"]
    convs = [ly for ly, n, t in zip(layers, names, types, strict=True) if t == "conv" and n != "WPCA"]
    return convs, vlad[0], wpca[0] if wpca else None, net.meta


def _average_rgb(p: Path, meta: Any) -> torch.Tensor:
    avg = getattr(getattr(meta, "normalization", None), "averageImage", None)
    if avg is None:
        raise WeightsError(f"{p}: net.meta.normalization.averageImage is missing")
    arr = np.asarray(avg, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr[0, 0]  # an HxWx3 average image, constant per channel; as hloc and netvlad_tf_open
    if arr.shape != (3,):
        raise WeightsError(f"{p}: averageImage has shape {np.shape(avg)}, expected 3 or HxWx3")
    return torch.from_numpy(arr.astype(np.float32))


def load_matconvnet_netvlad(path: str | Path) -> NetVLADVGG16:
    """Build :class:`NetVLADVGG16` from the official MatConvNet model in struct form.

    K and the whitening size are read from the file; without a ``WPCA`` layer the model has no
    whitening. The model takes [0, 1] images: the scale 255 and ``averageImage`` are stored in it.
    """
    p = _check_file(path)
    convs, vlad, wpca, meta = _read_mat_net(p)
    assign_w, neg_centroids = _layer_weights(p, vlad, 2)
    d_by_k = np.shape(neg_centroids)
    if len(d_by_k) != 2 or d_by_k[0] != VGG_DIM:
        raise WeightsError(f"{p}: vlad:core centroids have shape {d_by_k}, expected ({VGG_DIM}, K)")
    k = d_by_k[1]
    whiten_dim = None
    if wpca is not None:
        whiten_dim = int(np.size(_layer_weights(p, wpca, 2)[1]))
    model = NetVLADVGG16(num_clusters=k, whiten_dim=whiten_dim)
    targets = _conv_layers(model)
    if len(convs) != len(targets):
        raise WeightsError(f"{p}: expected {len(targets)} VGG16 conv layers up to conv5_3, found {len(convs)}")
    with torch.no_grad():
        for layer, conv in zip(convs, targets, strict=True):
            w, b = _layer_weights(p, layer, 2)
            cout, cin, kh, kw = conv.weight.shape
            name = f"layer {layer.name!r}"
            # MatConvNet filters are H x W x Cin x Cout and applied as a correlation, like PyTorch's
            conv.weight.copy_(_tensor(p, f"{name} filters", w, (kh, kw, cin, cout)).permute(3, 2, 0, 1))
            _bias(conv).copy_(_tensor(p, f"{name} biases", b, (cout,)))
        a = _tensor(p, "vlad:core assignment filters", assign_w, (VGG_DIM, k))
        c = -_tensor(p, "vlad:core centroids", neg_centroids, (VGG_DIM, k))  # stored negated
        model.pool.load_assignment(a.T, None, c.T)
        if model.whiten is not None:
            g = model.whiten.out_features  # == whiten_dim
            w, b = _layer_weights(p, wpca, 2)
            w = _tensor(p, "WPCA filters", w, (VGG_DIM * k, g))  # rows d * K + k
            w = w.reshape(VGG_DIM, k, g).permute(2, 1, 0)  # [G, K, D]
            model.whiten.weight.copy_(w.reshape(g, k * VGG_DIM))
            model.whiten.bias.copy_(_tensor(p, "WPCA biases", b, (g,)))
    return model.set_preprocessing(255.0, _average_rgb(p, meta), torch.ones(3)).eval()


# --- pytorch-NetVlad -------------------------------------------------------------------------------


def _read_state_dict(p: Path) -> dict[str, torch.Tensor]:
    ckpt = safe_load(p, "pytorch-NetVlad checkpoint")
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{p}: expected a pytorch-NetVlad checkpoint (a dict with a 'state_dict' of tensors)")
    # nn.DataParallel wrappers (pytorch-NetVlad's multi-GPU training) insert a 'module.' segment
    return {".".join(s for s in k.split(".") if s != "module"): v for k, v in sd.items()}


def _take(p: Path, sd: dict[str, torch.Tensor], key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if key not in sd:
        raise WeightsError(f"{p}: key {key!r} missing from the state dict")
    return _tensor(p, repr(key), sd[key].detach().float().numpy(), shape)


def load_pytorch_netvlad(path: str | Path) -> NetVLADVGG16:
    """Build :class:`NetVLADVGG16` from a pytorch-NetVlad (VGG16) checkpoint; K is read from the file.

    The model takes [0, 1] images and applies the ImageNet mean and std pytorch-NetVlad trained with.
    Whitening is added only when the checkpoint has Patch-NetVLAD's ``WPCA.0`` conv.
    """
    p = _check_file(path)
    sd = _read_state_dict(p)
    if "pool.centroids" not in sd or sd["pool.centroids"].dim() != 2:
        raise WeightsError(f"{p}: key 'pool.centroids' [K, {VGG_DIM}] missing from the state dict")
    k = sd["pool.centroids"].shape[0]
    whiten_dim = sd["WPCA.0.bias"].numel() if "WPCA.0.bias" in sd else None
    model = NetVLADVGG16(num_clusters=k, whiten_dim=whiten_dim)
    with torch.no_grad():
        for i, conv in enumerate(model.encoder):
            if isinstance(conv, nn.Conv2d):
                conv.weight.copy_(_take(p, sd, f"encoder.{i}.weight", tuple(conv.weight.shape)))
                conv_bias = _bias(conv)
                conv_bias.copy_(_take(p, sd, f"encoder.{i}.bias", tuple(conv_bias.shape)))
        bias = _take(p, sd, "pool.conv.bias", (k,)) if "pool.conv.bias" in sd else None
        model.pool.load_assignment(_take(p, sd, "pool.conv.weight", (k, VGG_DIM, 1, 1)), bias,
                                   _take(p, sd, "pool.centroids", (k, VGG_DIM)))
        if model.whiten is not None:
            g = model.whiten.out_features  # == whiten_dim
            model.whiten.weight.copy_(_take(p, sd, "WPCA.0.weight", (g, k * VGG_DIM, 1, 1)).flatten(1))
            model.whiten.bias.copy_(_take(p, sd, "WPCA.0.bias", (g,)))
    mean, std = PYTORCH_NETVLAD_INPUT.normalisation()
    return model.set_preprocessing(1.0, torch.tensor(mean), torch.tensor(std)).eval()
