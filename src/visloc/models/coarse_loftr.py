"""Coarse LoFTR: the coarse level of LoFTR (Sun et al., CVPR 2021) as a small, exportable dense matcher.

A ResNet backbone (no FPN: the coarse feature is the last stage's 1x1 output conv, as in LoFTR, and the
top-down branch that feeds only LoFTR's fine level is not built), a sinusoidal positional encoding, a
stack of self / cross linear-attention layers and a dual-softmax over the cell similarities. With the
``s`` preset it is Kolkir's Coarse_LoFTR_TRT student (cells of 16 pixels, about 125k parameters); with
``loftr-outdoor`` / ``loftr-indoor`` it is the coarse part of LoFTR itself, which loads from a user's
LoFTR checkpoint (``visloc.weights.converters.loftr``) and serves as a distillation teacher.

Written here rather than taken from kornia because kornia's ``LoFTR`` always builds the fine stage and
its einsum / data-dependent matching does not export to a static ONNX graph; the state-dict names are
LoFTR's (``backbone.*``, ``loftr_coarse.layers.N.*``), so weights move between the two, and a test holds
the transformer equal to kornia's ``LocalFeatureTransformer`` on the same weights.

Conventions:
    Images ``[B, 1, H, W]`` gray in ``[0, 1]``, ``H`` and ``W`` multiples of ``resolution``. The coarse
    grid of an image has ``h = H / r`` rows and ``w = W / r`` columns; cell ``(x, y)`` (column, row) has
    index ``y * w + x`` (row-major), and its centre is pixel ``((x + 0.5) r - 0.5, (y + 0.5) r - 0.5)``
    (pixel-centre-at-0). ``conf[b, i, j]`` is the dual-softmax confidence of cell ``i`` of image 0 and
    cell ``j`` of image 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from visloc.conf import ConfError
from visloc.errors import InputError
from visloc.export.spec import ExportSpec


@dataclass(frozen=True)
class CoarseLoFTRConf:
    """The architecture.

    Attributes:
        resolution: coarse cell size in pixels, 8 (three backbone stages) or 16 (four).
        initial_dim: channels of the stem (7x7 / 2 conv).
        block_dims: channels of each stage, 3 for resolution 8 and 4 for 16; the last is the feature dim.
        d_model: transformer width (must equal ``block_dims[-1]``).
        nhead: attention heads (``d_model`` must be a multiple).
        layer_names: ``"self"`` / ``"cross"`` per encoder layer, in order.
        temp_bug_fix: the corrected positional encoding (LoFTR#41); False only for weights trained with
            the old one (LoFTR's ``outdoor_ds``, Kolkir's students).
        temperature: dual-softmax temperature.
        layer_norm_eps: LayerNorm epsilon (LoFTR: PyTorch's default; Kolkir: 1e-7).
    """

    resolution: int = 16
    initial_dim: int = 8
    block_dims: tuple[int, ...] = (8, 16, 32, 32)
    d_model: int = 32
    nhead: int = 1
    layer_names: tuple[str, ...] = ("self", "cross", "self", "cross")
    temp_bug_fix: bool = True
    temperature: float = 0.1
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        stages = {8: 3, 16: 4}
        if self.resolution not in stages:
            raise ConfError(f"CoarseLoFTRConf.resolution: 8 or 16, got {self.resolution}")
        if len(self.block_dims) != stages[self.resolution] or min(self.block_dims, default=0) < 1:
            raise ConfError(f"CoarseLoFTRConf.block_dims: {stages[self.resolution]} positive dims for resolution "
                             f"{self.resolution}, got {self.block_dims}")
        if self.initial_dim < 1:
            raise ConfError(f"CoarseLoFTRConf.initial_dim: must be >= 1, got {self.initial_dim}")
        if self.d_model != self.block_dims[-1] or self.d_model % 4:
            raise ConfError(f"CoarseLoFTRConf.d_model: must equal block_dims[-1] = {self.block_dims[-1]} and be a "
                             f"multiple of 4 (positional encoding), got {self.d_model}")
        if self.nhead < 1 or self.d_model % self.nhead:
            raise ConfError(f"CoarseLoFTRConf.nhead: must divide d_model = {self.d_model}, got {self.nhead}")
        if not self.layer_names or set(self.layer_names) - {"self", "cross"}:
            raise ConfError(f"CoarseLoFTRConf.layer_names: a non-empty list of 'self' / 'cross', got "
                             f"{self.layer_names}")
        if not self.temperature > 0 or not self.layer_norm_eps > 0:
            raise ConfError(f"CoarseLoFTRConf: temperature and layer_norm_eps must be > 0, got {self.temperature} "
                             f"and {self.layer_norm_eps}")


_LOFTR = CoarseLoFTRConf(resolution=8, initial_dim=128, block_dims=(128, 196, 256), d_model=256, nhead=8,
                         layer_names=("self", "cross") * 4)
#: ``s``: Kolkir's student dims with the fixed encoding; ``m``: a wider student, still at 1/16;
#: ``loftr-outdoor`` / ``loftr-indoor``: LoFTR's coarse level (outdoor_ds was trained with the old encoding)
PRESETS: dict[str, CoarseLoFTRConf] = {
    "s": CoarseLoFTRConf(),
    "m": CoarseLoFTRConf(initial_dim=16, block_dims=(16, 32, 64, 64), d_model=64, nhead=2,
                         layer_names=("self", "cross") * 3),
    "loftr-outdoor": replace(_LOFTR, temp_bug_fix=False),
    "loftr-indoor": _LOFTR,
}


def preset(name: str) -> CoarseLoFTRConf:
    """The preset ``name``; an unknown one is a ``ValueError`` listing the known presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown Coarse LoFTR preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 conv-BN, a 1x1 conv-BN shortcut when strided), LoFTR's names."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # LoFTR projects the shortcut only when strided; a stem narrower than the first stage needs it too
        same = stride == 1 and cin == cout
        self.downsample = None if same else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, cin, H, W] -> [B, cout, H / stride, W / stride]``."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class CoarseBackbone(nn.Module):
    """LoFTR's ResNet without the FPN branch: stem at 1/2, stages at 1/2, 1/4, 1/8 (, 1/16), 1x1 output conv."""

    def __init__(self, conf: CoarseLoFTRConf) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, conf.initial_dim, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(conf.initial_dim)
        cin = conf.initial_dim
        for k, dim in enumerate(conf.block_dims, start=1):
            stride = 1 if k == 1 else 2
            self.add_module(f"layer{k}", nn.Sequential(BasicBlock(cin, dim, stride), BasicBlock(dim, dim, 1)))
            cin = dim
        self.num_stages = len(conf.block_dims)
        self.add_module(f"layer{self.num_stages}_outconv", nn.Conv2d(cin, cin, 1, bias=False))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W] -> [B, block_dims[-1], H / r, W / r]``."""
        x = F.relu(self.bn1(self.conv1(x)))
        for k in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{k}")(x)
        return getattr(self, f"layer{self.num_stages}_outconv")(x)


def sine_encoding(d_model: int, h: int, w: int, temp_bug_fix: bool) -> torch.Tensor:
    """LoFTR's 2D sinusoidal encoding ``[1, d_model, h, w]`` (positions count from 1, as LoFTR's cumsum).

    Channels ``4k .. 4k + 3`` are ``sin(x f_k), cos(x f_k), sin(y f_k), cos(y f_k)``. The old encoding
    (``temp_bug_fix=False``) computes the frequency step as ``(-ln 1e4 / d) // 2``, which is -1.
    """
    half = d_model // 2
    step = -math.log(10000.0) / half if temp_bug_fix else (-math.log(10000.0) / d_model) // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float32) * step)[:, None, None]
    y = torch.arange(1, h + 1, dtype=torch.float32)[None, :, None].expand(1, h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32)[None, None, :].expand(1, h, w)
    pe = torch.zeros(d_model, h, w)
    pe[0::4], pe[1::4] = torch.sin(x * freq), torch.cos(x * freq)
    pe[2::4], pe[3::4] = torch.sin(y * freq), torch.cos(y * freq)
    return pe[None]


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention (Katharopoulos et al. 2020, feature map elu + 1) with batched matmuls only.

    Args:
        q: ``[N, H, L, D]`` queries.
        k: ``[N, H, S, D]`` keys.
        v: ``[N, H, S, V]`` values.
        eps: added to the normaliser.

    Returns:
        ``[N, H, L, V]``: ``phi(q) (phi(k)^T v) / (phi(q) sum_s phi(k_s) + eps)``, the values divided by
        ``S`` inside and multiplied back outside as LoFTR does (against fp16 overflow).
    """
    q, k = F.elu(q) + 1, F.elu(k) + 1
    s = v.shape[2]
    kv = k.transpose(2, 3) @ (v / s)  # [N, H, D, V]
    z = 1.0 / (q @ k.sum(dim=2, keepdim=True).transpose(2, 3) + eps)  # [N, H, L, 1]
    return (q @ kv) * z * s


class EncoderLayer(nn.Module):
    """LoFTR's encoder layer: multi-head linear attention, merge, LayerNorm, a [x, message] MLP, LayerNorm, residual."""

    def __init__(self, d_model: int, nhead: int, eps: float) -> None:
        super().__init__()
        self.nhead, self.dim = nhead, d_model // nhead
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model, bias=False), nn.ReLU(),
                                 nn.Linear(2 * d_model, d_model, bias=False))
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, self.nhead, self.dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """``x [N, L, C]`` attends to ``source [N, S, C]``; returns ``[N, L, C]``."""
        n, length, c = x.shape
        msg = linear_attention(self._heads(self.q_proj(x)), self._heads(self.k_proj(source)),
                               self._heads(self.v_proj(source)))
        msg = self.norm1(self.merge(msg.transpose(1, 2).reshape(n, length, c)))
        return x + self.norm2(self.mlp(torch.cat([x, msg], dim=2)))


class CoarseTransformer(nn.Module):
    """Self / cross layers over two token sets; LoFTR's ``LocalFeatureTransformer`` state-dict layout."""

    def __init__(self, conf: CoarseLoFTRConf) -> None:
        super().__init__()
        self.layer_names = conf.layer_names
        self.layers = nn.ModuleList(EncoderLayer(conf.d_model, conf.nhead, conf.layer_norm_eps)
                                    for _ in conf.layer_names)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f0 [N, L, C]``, ``f1 [N, S, C]`` -> the transformed pair (same shapes)."""
        for layer, name in zip(self.layers, self.layer_names, strict=True):
            # in order, as LoFTR: image 1's cross layer already sees image 0's updated tokens
            f0 = layer(f0, f0 if name == "self" else f1)
            f1 = layer(f1, f1 if name == "self" else f0)
        return f0, f1


class CoarseLoFTR(nn.Module):
    """Backbone + positional encoding + coarse transformer + dual-softmax (module docstring).

    Args:
        conf: the architecture.
        max_shape: grid ``(h, w)`` up to which the positional encoding is precomputed; larger inputs
            extend it on the fly (not inside an exported graph, whose shapes are static).
    """

    def __init__(self, conf: CoarseLoFTRConf | None = None, max_shape: tuple[int, int] = (128, 128)) -> None:
        super().__init__()
        self.conf = conf or CoarseLoFTRConf()
        self.backbone = CoarseBackbone(self.conf)
        self.loftr_coarse = CoarseTransformer(self.conf)
        self.register_buffer("pe", sine_encoding(self.conf.d_model, *max_shape, self.conf.temp_bug_fix),
                             persistent=False)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the coarse grid of an ``height x width`` image; ValueError unless both divide."""
        r = self.conf.resolution
        if height % r or width % r or height < r or width < r:
            raise InputError(f"CoarseLoFTR: image size {width}x{height} must be positive multiples of the "
                             f"resolution {r}")
        return height // r, width // r

    def _encoding(self, h: int, w: int) -> torch.Tensor:
        pe = cast(torch.Tensor, self.pe)  # a registered buffer
        if h > pe.shape[2] or w > pe.shape[3]:
            pe = sine_encoding(self.conf.d_model, max(h, pe.shape[2]), max(w, pe.shape[3]),
                               self.conf.temp_bug_fix).to(pe)
            self.pe = pe
        return pe[:, :, :h, :w]

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Backbone features with the positional encoding, as tokens: ``[B, 1, H, W] -> [B, h*w, C]``."""
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"CoarseLoFTR: expected gray images [B, 1, H, W], got {tuple(image.shape)}")
        h, w = self.grid(image.shape[2], image.shape[3])
        feat = self.backbone(image) + self._encoding(h, w)
        return feat.flatten(2).transpose(1, 2)

    def match_tokens(self, t0: torch.Tensor, t1: torch.Tensor) -> dict[str, torch.Tensor]:
        """Transformer and dual-softmax on the tokens of two images (``features``); see ``forward``."""
        f0, f1 = self.loftr_coarse(t0, t1)
        scale = math.sqrt(self.conf.d_model)
        sim = (f0 / scale) @ (f1 / scale).transpose(1, 2)
        logits = sim / self.conf.temperature
        conf = F.softmax(logits, dim=1) * F.softmax(logits, dim=2)
        return {"conf": conf, "sim": sim}

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> dict[str, torch.Tensor]:
        """Match two batches of gray images.

        Args:
            image0: ``[B, 1, H0, W0]`` in ``[0, 1]``, sides multiples of ``conf.resolution``.
            image1: ``[B, 1, H1, W1]`` likewise.

        Returns:
            ``conf``: ``[B, L, S]`` dual-softmax confidences (``L = h0 w0``, ``S = h1 w1`` cells, row-major);
            ``sim``: ``[B, L, S]`` raw similarities ``<f0, f1> / d_model`` (before the temperature).
        """
        for which, image in (("image0", image0), ("image1", image1)):
            if image.ndim != 4 or image.shape[1] != 1:
                raise ValueError(f"CoarseLoFTR: {which}: expected gray images [B, 1, H, W], got {tuple(image.shape)}")
        if image0.shape[0] != image1.shape[0]:
            raise ValueError(f"CoarseLoFTR: batches of {image0.shape[0]} and {image1.shape[0]} images")
        if image0.shape == image1.shape:  # one backbone pass for both (as LoFTR: BatchNorm sees both images)
            t0, t1 = self.features(torch.cat([image0, image1])).chunk(2)
            return self.match_tokens(t0, t1)
        return self.match_tokens(self.features(image0), self.features(image1))

    def export_spec(self, height: int = 480, width: int = 640, batch: int = 1, seed: int = 0, dynamic: bool = False,
                    match: CoarseMatchConf | None = None) -> ExportSpec:
        """Static-shape spec of ``CoarseLoFTRGraph`` (this network + the match mask), for ``export_model``.

        ``dynamic=True`` is refused: the graph is static so that TensorRT needs no dynamic shapes.
        """
        if dynamic:
            raise InputError("loftr-coarse exports static shapes only (choose the size: --size WxH)")
        self.grid(height, width)
        g = torch.Generator().manual_seed(seed)
        example = {"image0": torch.rand(batch, 1, height, width, generator=g),
                   "image1": torch.rand(batch, 1, height, width, generator=g)}
        check = {"image0": torch.rand(batch, 1, height, width, generator=g),
                 "image1": torch.rand(batch, 1, height, width, generator=g)}
        return ExportSpec(example, ("conf", "mask"), None, check_inputs=[check],
                          metadata={"visloc_match": json.dumps(asdict(match or CoarseMatchConf()))})


@dataclass(frozen=True)
class CoarseMatchConf:
    """How matches are read from the confidence matrix (identical in PyTorch and in the ONNX graph).

    Attributes:
        threshold: a match's confidence must exceed it.
        border: cells removed on each side of both grids (LoFTR's ``border_rm``).
        mutual: the entry must be the maximum of its row and of its column.
    """

    threshold: float = 0.2
    border: int = 2
    mutual: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.threshold < 1 or self.border < 0:
            raise ConfError(f"CoarseMatchConf: threshold in [0, 1) and border >= 0, got {self.threshold} and "
                             f"{self.border}")


def _inner_cells(hw: tuple[int, int], border: int, device: torch.device) -> torch.Tensor:
    h, w = hw
    rows = (torch.arange(h, device=device) >= border) & (torch.arange(h, device=device) < h - border)
    cols = (torch.arange(w, device=device) >= border) & (torch.arange(w, device=device) < w - border)
    return (rows[:, None] & cols[None, :]).reshape(-1)


def match_mask(conf: torch.Tensor, hw0: tuple[int, int], hw1: tuple[int, int],
               mconf: CoarseMatchConf | None = None) -> torch.Tensor:
    """The matches of a confidence matrix as a fixed-size mask (tensor ops only: it exports).

    Args:
        conf: ``[B, L, S]`` with ``L = h0 w0`` and ``S = h1 w1``.
        hw0: ``(h0, w0)`` grid of image 0.
        hw1: ``(h1, w1)`` grid of image 1.
        mconf: threshold, border, mutual nearest neighbour.

    Returns:
        ``[B, L, S]`` bool: above the threshold, both cells off the border, and (``mutual``) the maximum of
        its row and of its column. Ties of a row maximum can mark two entries; ``extract_matches`` keeps one.
    """
    mconf = mconf or CoarseMatchConf()
    if conf.ndim != 3 or conf.shape[1] != hw0[0] * hw0[1] or conf.shape[2] != hw1[0] * hw1[1]:
        raise ValueError(f"match_mask: conf must be [B, {hw0[0] * hw0[1]}, {hw1[0] * hw1[1]}], got "
                         f"{tuple(conf.shape)}")
    mask = conf > mconf.threshold
    if mconf.border > 0:
        inner0 = _inner_cells(hw0, mconf.border, conf.device)
        inner1 = _inner_cells(hw1, mconf.border, conf.device)
        mask = mask & inner0[None, :, None] & inner1[None, None, :]
    if mconf.mutual:
        mask = mask & (conf == conf.amax(dim=2, keepdim=True)) & (conf == conf.amax(dim=1, keepdim=True))
    return mask


def extract_matches(conf: torch.Tensor, mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch item ``(idx0 [M], idx1 [M], scores [M])`` of the masked entries, one per cell of image 0.

    Args:
        conf: ``[B, L, S]`` confidences.
        mask: ``[B, L, S]`` bool (``match_mask``).

    Returns:
        int64 cell indices into the two grids and float32 confidences, ordered by ``idx0``.
    """
    out = []
    for c, m in zip(conf, mask, strict=True):
        scores, idx1 = torch.where(m, c, torch.full_like(c, -1.0)).max(dim=1)
        idx0 = torch.nonzero(scores >= 0, as_tuple=False)[:, 0]
        idx1 = idx1[idx0]
        if len(idx0):  # a column maximum tied in two rows: keep the first row per column
            first = torch.ones_like(idx1, dtype=torch.bool)
            order = torch.argsort(idx1 * len(c) + idx0)
            sorted1 = idx1[order]
            first[order[1:]] = sorted1[1:] != sorted1[:-1]
            idx0, idx1 = idx0[first], idx1[first]
        out.append((idx0, idx1, scores[idx0].float()))
    return out


def cell_centers(h: int, w: int, resolution: int) -> torch.Tensor:
    """``[h w, 2]`` float32 ``(x, y)`` pixel centres of the cells, row-major, pixel-centre-at-0."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1).add(0.5).mul(resolution).sub(0.5)


class CoarseLoFTRGraph(nn.Module):
    """What ``visloc export loftr-coarse`` writes: the network and the fixed-size match mask.

    ``forward(image0, image1) -> {"conf": [B, L, S], "mask": [B, L, S] bool}``: no einsum, no NonZero, static
    shapes; the indices are read outside the graph (``extract_matches``), so TensorRT needs no dynamic output.
    """

    def __init__(self, model: CoarseLoFTR, match: CoarseMatchConf | None = None) -> None:
        super().__init__()
        self.model, self.match = model, match or CoarseMatchConf()
        self.conf = model.conf

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"conf", "mask"}`` of two ``[B, 1, H, W]`` batches."""
        conf = self.model(image0, image1)["conf"]
        hw0 = self.model.grid(image0.shape[2], image0.shape[3])
        hw1 = self.model.grid(image1.shape[2], image1.shape[3])
        return {"conf": conf, "mask": match_mask(conf, hw0, hw1, self.match)}

    def export_spec(self, **shape_args: Any) -> ExportSpec:
        """The wrapped network's spec with this graph's match conf."""
        return self.model.export_spec(**shape_args, match=self.match)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
