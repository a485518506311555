"""HF-Net (Sarlin et al., CVPR 2019): one MobileNetV2 forward, local features and a global descriptor.

Layout (torchvision indices, width 0.75; see ``models.backbones``)::

    gray [B, 1, H, W] -> (x - mean) / std -> features[:7]  -> [B, 24, H/8, W/8]  (stride 8, TF-slim layer_7)
        local head:  detector   conv3x3 -> BN -> ReLU -> conv1x1 -> logits [B, 65, H/8, W/8]
                     descriptor conv3x3 -> BN -> ReLU -> conv1x1 -> L2 -> dense [B, D, H/8, W/8]
    -> features[7:18] -> [B, 240, H/32, W/32]  (last inverted residual block, not the 1280 conv)
        global head: conv1x1 240 -> global_feature_dim (projection) -> NetVLAD (K clusters, BN memberships)
                     -> [B, K * global_feature_dim] -> Linear to global_dim unless equal -> L2 -> [B, G]

The projection keeps the global head small: a NetVLAD over all 240 channels gives 32 * 240 = 7680
dimensions and a dense 7680 -> 4096 reduction alone is 31.5M parameters (126 MB in float32), while
240 -> 128 then 32 * 128 = 4096 costs 31k parameters and needs no reduction.

``forward`` is pure tensor code (ONNX opset 17, dynamic H and W). Detection (heatmap, NMS, borders,
top-k) and descriptor sampling run outside the graph with the functions of this module.

Conventions: the heatmap's pixel ``(x, y)`` = ``(8 j + s, 8 i + r)`` comes from logit channel
``8 r + s`` of cell ``(i, j)`` (``pixel_shuffle``, as SuperPoint); channel 64 is the dustbin.
Keypoints are ``(x, y)`` pixels, centre of the top-left pixel at ``(0, 0)``. The dense descriptor of
cell ``(i, j)`` sits at pixel ``(8 j + 3.5, 8 i + 3.5)``, the centre of its 8x8 cell; sampling uses
``grid_sample(align_corners=False)`` with ``x_n = 2 (x + 0.5) / (8 w) - 1``, i.e. exactly that
placement, with the border cells' values extended outwards (``padding_mode="border"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.jit import is_tracing  # pyright: ignore[reportPrivateImportUsage]  # public, not in torch.jit.__all__

from visloc.errors import InputError
from visloc.export.spec import ExportSpec
from visloc.models.backbones import mobilenet_v2_channels, mobilenet_v2_features
from visloc.models.heads.netvlad import NetVLAD
from visloc.weights.records import IMAGENET_GRAY

#: number of ``features`` blocks before the local head (stride 8) and before the global head (stride 32)
LOCAL_BLOCKS = 7
GLOBAL_BLOCKS = 18
CELL = 8
#: ONNX graph of ``HFNet.forward`` (``export_spec``): input name, output names, conf metadata key
ONNX_INPUT = "image"
ONNX_OUTPUTS = ("logits", "dense_descriptors", "global_descriptor")
ONNX_CONF_KEY = "visloc_hfnet_conf"
#: ``(H, W)`` of the export parity check's images: VGA, and an odd number of 8x8 cells per side
ONNX_CHECK_SIZES = ((480, 640), (200, 328))


@dataclass(frozen=True)
class HFNetConf:
    """Architecture of HF-Net (no weights: those come from a checkpoint, see ``features.hfnet``).

    Attributes:
        width_mult: MobileNetV2 width multiplier.
        head_channels: channels of the 3x3 conv of each local head (SuperPoint: 256).
        descriptor_dim: D of the local descriptors.
        num_clusters: K of NetVLAD.
        global_feature_dim: channels of the 1x1 projection before NetVLAD; 0 = no projection
            (NetVLAD over the backbone's channels).
        global_dim: G of the global descriptor; a Linear reduction is added when ``K * dim != G``.
        bn_membership: HF-Net's BatchNorm on NetVLAD's assignment logits.
    """

    width_mult: float = 0.75
    head_channels: int = 256
    descriptor_dim: int = 256
    num_clusters: int = 32
    global_feature_dim: int = 128
    global_dim: int = 4096
    bn_membership: bool = True


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class HFNet(nn.Module):
    """HF-Net: gray image -> detector logits, dense local descriptors, global descriptor.

    Args:
        conf: the architecture; all weights start random (load a checkpoint or ImageNet backbone
            weights explicitly).
    """

    mean_std: torch.Tensor  # buffer [2]: gray mean and std

    def __init__(self, conf: HFNetConf | None = None) -> None:
        super().__init__()
        conf = conf or HFNetConf()
        for name in ("head_channels", "descriptor_dim", "num_clusters", "global_dim"):
            if getattr(conf, name) < 1:
                raise ValueError(f"HFNetConf.{name} must be positive, got {getattr(conf, name)}")
        if conf.global_feature_dim < 0:
            raise ValueError(f"HFNetConf.global_feature_dim must be >= 0, got {conf.global_feature_dim}")
        self.conf = conf
        self.backbone = mobilenet_v2_features(conf.width_mult, in_channels=1)
        c_local = mobilenet_v2_channels(self.backbone, LOCAL_BLOCKS)
        c_global = mobilenet_v2_channels(self.backbone, GLOBAL_BLOCKS)
        self.detector = nn.Sequential(_conv_bn_relu(c_local, conf.head_channels),
                                      nn.Conv2d(conf.head_channels, CELL * CELL + 1, 1))
        self.descriptor = nn.Sequential(_conv_bn_relu(c_local, conf.head_channels),
                                        nn.Conv2d(conf.head_channels, conf.descriptor_dim, 1))
        vlad_dim = conf.global_feature_dim or c_global
        self.projection = nn.Conv2d(c_global, vlad_dim, 1) if conf.global_feature_dim else nn.Identity()
        self.netvlad = NetVLAD(conf.num_clusters, vlad_dim, bn_membership=conf.bn_membership)
        vlad_out = conf.num_clusters * vlad_dim
        self.reduction = nn.Linear(vlad_out, conf.global_dim) if vlad_out != conf.global_dim else nn.Identity()
        # the summed-RGB stem of ImageNet MobileNetV2 expects gray normalised as its record says
        (mean,), (std,) = IMAGENET_GRAY.normalisation()
        self.register_buffer("mean_std", torch.tensor([mean, std]), persistent=False)

    @property
    def descriptor_dim(self) -> int:
        """D of the dense local descriptors."""
        return self.conf.descriptor_dim

    @property
    def global_dim(self) -> int:
        """G of the global descriptor."""
        return self.conf.global_dim

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run both heads on one backbone pass.

        Args:
            image: ``[B, 1, H, W]`` float in ``[0, 1]``, ``H`` and ``W`` multiples of 8 (the
                extractor pads).

        Returns:
            ``logits [B, 65, H/8, W/8]`` raw detector logits (channel 64 = dustbin),
            ``dense_descriptors [B, D, H/8, W/8]`` L2-normalised along D,
            ``global_descriptor [B, G]`` L2-normalised.
        """
        if not is_tracing() and not torch.compiler.is_compiling():
            _check_input(image)
        x = (image - self.mean_std[0]) / self.mean_std[1]
        local = x
        for i, block in enumerate(self.backbone):
            x = block(x)
            if i == LOCAL_BLOCKS - 1:
                local = x
        logits = self.detector(local)
        dense = F.normalize(self.descriptor(local), p=2.0, dim=1)
        g = self.reduction(self.netvlad(self.projection(x)))
        return {"logits": logits, "dense_descriptors": dense, "global_descriptor": F.normalize(g, p=2.0, dim=1)}

    def export_spec(self, batch: int = 1, height: int = 64, width: int = 96, dynamic: bool = True,
                    check_sizes: tuple[tuple[int, int], ...] = ONNX_CHECK_SIZES, seed: int = 0) -> ExportSpec:
        """ONNX spec of ``forward``: ``image [B, 1, H, W]`` -> the three outputs (``visloc.export``).

        Args:
            batch: the example's ``B``.
            height: the example's ``H`` (a multiple of 8).
            width: the example's ``W`` (a multiple of 8).
            dynamic: dynamic batch, height and width (outputs: batch and cells); else static shapes.
            check_sizes: ``(H, W)`` of the parity check's images (multiples of 8) when dynamic;
                static shapes check one more image of the example's size.
            seed: seed of the random ``[0, 1]`` images.
        """
        sizes = ((height, width), *check_sizes) if dynamic else ((height, width), (height, width))
        for h, w in sizes:
            if h % CELL or w % CELL or h < CELL or w < CELL:
                raise InputError(f"hfnet export: image sizes must be positive multiples of {CELL}, got {h}x{w}")
        if batch < 1:
            raise InputError(f"hfnet export: batch must be >= 1, got {batch}")
        gen = torch.Generator().manual_seed(seed)
        images = [{ONNX_INPUT: torch.rand(batch, 1, h, w, generator=gen)} for h, w in sizes]
        cells = {0: "batch", 2: "cells_h", 3: "cells_w"}
        axes = {ONNX_INPUT: {0: "batch", 2: "height", 3: "width"}, "logits": cells, "dense_descriptors": cells,
                "global_descriptor": {0: "batch"}}
        return ExportSpec(images[0], ONNX_OUTPUTS, axes if dynamic else None, check_inputs=images[1:],
                          atol=1e-4, conf_key=ONNX_CONF_KEY)


def _check_input(image: torch.Tensor) -> None:
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"image: expected [B, 1, H, W], got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    if h % CELL or w % CELL or h < CELL or w < CELL:
        raise ValueError(f"image: H and W must be positive multiples of {CELL}, got {h}x{w} (pad first)")


# ---------------------------------------------------------------- post-processing (outside the graph)


def logits_to_heatmap(logits: torch.Tensor) -> torch.Tensor:
    """Detector logits ``[B, 65, h, w]`` -> keypoint probability ``[B, 8 h, 8 w]``.

    Softmax over the 65 channels, dustbin dropped, channel ``8 r + s`` of cell ``(i, j)`` placed at
    pixel row ``8 i + r``, column ``8 j + s`` (``pixel_shuffle``).
    """
    if logits.ndim != 4 or logits.shape[1] != CELL * CELL + 1:
        raise ValueError(f"logits: expected [B, 65, h, w], got {tuple(logits.shape)}")
    prob = logits.softmax(dim=1)[:, :-1]
    return F.pixel_shuffle(prob, CELL)[:, 0]


def _max_pool_1d(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over ``[i - radius, i + radius]`` along ``dim`` (-1 or -2) of ``x [B, H, W]``, by doubling shifts.

    ``F.max_pool2d`` with a 9x9 window took 24 ms on a 640x480 map on this CPU (2 threads); the shifts
    take 0.7 ms for both axes: windows of 1, 2, 4, ... ``p`` samples by pairwise maxima, then two
    overlapping windows of ``p`` cover ``2 radius + 1``.
    """
    k, n = 2 * radius + 1, x.shape[dim]
    pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
    m = F.pad(x, pad, value=float("-inf") if x.dtype.is_floating_point else 0)
    p = 1
    while 2 * p <= k:
        length = m.shape[dim] - p
        m = torch.maximum(m.narrow(dim, 0, length), m.narrow(dim, p, length))
        p *= 2
    return torch.maximum(m.narrow(dim, 0, n), m.narrow(dim, k - p, n))


def _max_pool(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over the ``(2 radius + 1)^2`` window of ``x [B, H, W]`` (float or bool), edges not padded in."""
    return _max_pool_1d(_max_pool_1d(x, radius, -1), radius, -2)


def simple_nms(heatmap: torch.Tensor, radius: int) -> torch.Tensor:
    """SuperPoint's fast NMS: keep local maxima of ``heatmap [B, H, W]`` in a ``(2 r + 1)^2`` window.

    Two extra rounds recover maxima that were only suppressed by a suppressed neighbour. Returns the
    heatmap with non-maxima set to 0 (same shape). ``radius = 0`` returns it unchanged.
    """
    if heatmap.ndim != 3:
        raise ValueError(f"heatmap: expected [B, H, W], got {tuple(heatmap.shape)}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return heatmap
    zeros = torch.zeros_like(heatmap)
    max_mask = heatmap == _max_pool(heatmap, radius)
    for _ in range(2):
        supp_mask = _max_pool(max_mask, radius)
        supp = torch.where(supp_mask, zeros, heatmap)
        new_max = supp == _max_pool(supp, radius)
        max_mask = max_mask | (new_max & ~supp_mask)
    return torch.where(max_mask, heatmap, zeros)


def detect_keypoints(
    heatmap: torch.Tensor,
    nms_radius: int = 4,
    threshold: float = 0.005,
    max_keypoints: int | None = 2048,
    border: int = 4,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keypoints of a heatmap ``[B, H, W]``: NMS, border removal, threshold, top-k.

    Args:
        heatmap: keypoint probabilities (``logits_to_heatmap``); crop it to the valid image first.
        nms_radius: NMS window radius in pixels (0: no NMS).
        threshold: keep scores strictly above it.
        max_keypoints: keep the highest scores; None or a value < 0 keeps all.
        border: drop keypoints closer than ``border`` pixels to the image edge (x < border or
            x >= W - border, same for y).

    Returns:
        per image, ``(keypoints [N, 2]`` float ``(x, y)`` pixels, ``scores [N])`` sorted by
        decreasing score (ties by raster order).
    """
    if heatmap.ndim != 3:
        raise ValueError(f"heatmap: expected [B, H, W], got {tuple(heatmap.shape)}")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    scores = simple_nms(heatmap, nms_radius)
    if border > 0:
        h, w = scores.shape[-2:]
        valid = torch.zeros_like(scores, dtype=torch.bool)
        valid[:, border:max(h - border, border), border:max(w - border, border)] = True
        scores = scores.masked_fill(~valid, 0.0)
    out = []
    for s in scores:
        ys, xs = torch.nonzero(s > threshold, as_tuple=True)
        sc, idx = torch.sort(s[ys, xs], descending=True, stable=True)  # NMS leaves at most ~HW / (r + 1)^2
        if max_keypoints is not None and max_keypoints >= 0:
            sc, idx = sc[:max_keypoints], idx[:max_keypoints]
        ys, xs = ys[idx], xs[idx]
        out.append((torch.stack([xs, ys], dim=-1).to(heatmap.dtype), sc))
    return out


def sample_descriptors(dense: torch.Tensor, keypoints: torch.Tensor, stride: int = CELL) -> torch.Tensor:
    """Bilinear descriptors at keypoints, L2-normalised.

    Args:
        dense: ``[B, D, h, w]`` descriptor map; cell ``(i, j)`` sits at pixel
            ``(stride j + (stride - 1) / 2, stride i + (stride - 1) / 2)``.
        keypoints: ``[B, N, 2]`` ``(x, y)`` pixels of the ``stride h x stride w`` image
            (pixel-centre-at-0).
        stride: pixels per cell.

    Returns:
        ``[B, N, D]`` unit-norm descriptors (beyond the outer cell centres the border cells' values).
    """
    if dense.ndim != 4 or keypoints.ndim != 3 or keypoints.shape[-1] != 2 or keypoints.shape[0] != dense.shape[0]:
        raise ValueError(f"dense [B, D, h, w] and keypoints [B, N, 2] expected, got {tuple(dense.shape)} "
                         f"and {tuple(keypoints.shape)}")
    h, w = dense.shape[-2:]
    size = torch.tensor([stride * w, stride * h], dtype=dense.dtype, device=dense.device)
    grid = (2.0 * (keypoints.to(dense.dtype) + 0.5) / size - 1.0)[:, None]  # [B, 1, N, 2]
    desc = F.grid_sample(dense, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(desc[:, :, 0].transpose(1, 2), p=2.0, dim=-1)
