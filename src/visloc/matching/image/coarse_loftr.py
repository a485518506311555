"""``loftr-coarse`` and ``loftr-coarse-onnx``: Coarse LoFTR as an image matcher (torch and onnxruntime).

Both take gray ``[B, 1, H, W]`` batches (RGB is converted) and return, per pair, the cell centres of the
matched cells as keypoints (pixels of the input tensors, pixel-centre-at-0) with their dual-softmax
confidences. Matches come from ``models.coarse_loftr.match_mask`` (threshold, border, mutual nearest
neighbour) then ``extract_matches``, in both runtimes, so the two give the same matches on the same graph.

Sizes: with ``size`` (``(W, H)``, multiples of the resolution) every input is resized to it and the
keypoints are mapped back, which is what the ONNX graph (static shapes) needs and what the live demo
does; without it (torch only) an input is padded at the right and bottom to the next multiple of the
resolution, and matches in the padding are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from visloc import conf_ranges as ranges
from visloc.matching.base import MATCHERS, ImageMatcher
from visloc.models.coarse_loftr import (
    CoarseLoFTR,
    CoarseLoFTRGraph,
    CoarseMatchConf,
    cell_centers,
    extract_matches,
    match_mask,
    preset,
)
from visloc.registry import Capabilities
from visloc.types import Matches
from visloc.weights.load import WeightsError

#: the shipped student's weights record (``visloc.weights.records.WEIGHTS``)
SHIPPED = "loftr-coarse-s"


@dataclass(frozen=True)
class CoarseLoFTRMatcherConf:
    """``loftr-coarse``.

    Attributes:
        weights: a visloc ``loftr-coarse`` checkpoint, a LoFTR checkpoint (its coarse level, with ``preset``
            ``loftr-outdoor`` / ``loftr-indoor``) or a Kolkir student (``preset`` s); None: the shipped student.
        preset: the architecture of a LoFTR / Kolkir file or of a random network.
        allow_random: without weights and without a shipped file, a random network (speed tests only).
        match: threshold, border and mutual check.
        size: ``(W, H)`` every image is resized to (None: pad to the resolution instead).
        resize_max: longest side ``match_images`` resizes the user's images to first (None: keep).
    """

    weights: str | None = None
    preset: str = "s"
    allow_random: bool = False
    match: CoarseMatchConf = field(default_factory=CoarseMatchConf)
    size: tuple[int, int] | None = None
    resize_max: int | None = 640

    def __post_init__(self) -> None:
        ranges.image_size(self)


def resolve_coarse_loftr(weights: str | None, preset_name: str = "s", allow_random: bool = False) -> CoarseLoFTR:
    """The network of ``CoarseLoFTRMatcherConf.weights`` (eval mode, CPU); see its attributes."""
    from visloc.weights.checkpoint import FORMAT, build_model, load_model_record
    from visloc.weights.converters.loftr import load_loftr_coarse
    from visloc.weights.load import safe_load
    from visloc.weights.records import check_shipped, installed_path

    shipped = installed_path(SHIPPED) if weights is None else None
    if shipped is not None:
        weights = str(check_shipped(SHIPPED, shipped))
    if weights is None:
        if not allow_random:
            raise WeightsError("loftr-coarse: no shipped student in this install; give --set weights=FILE (a "
                               "checkpoint from 'visloc train configs/loftr_coarse.yaml') or allow_random=true")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return CoarseLoFTR(preset(preset_name)).eval()
    raw = safe_load(weights, "Coarse LoFTR weights")
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        from visloc.models.coarse_loftr import CoarseLoFTRConf

        return build_model(load_model_record(weights, "loftr-coarse"), CoarseLoFTRConf, CoarseLoFTR)
    return load_loftr_coarse(weights, preset_name)


def _to_size(image: torch.Tensor, size: tuple[int, int] | None, r: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """``image`` resized to ``size`` or padded to multiples of ``r``; the (x, y) factors back to the input."""
    h, w = image.shape[2], image.shape[3]
    if size is not None and (w, h) != tuple(size):
        out = F.interpolate(image, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=True)
        return out, (w / size[0], h / size[1])
    if size is not None:  # already the graph's size
        return image, (1.0, 1.0)
    ph, pw = -h % r, -w % r
    return (F.pad(image, (0, pw, 0, ph)) if ph or pw else image), (1.0, 1.0)


def _valid_cells(hw: tuple[int, int], real: tuple[int, int], r: int, device: torch.device) -> torch.Tensor:
    """``[h w]`` bool: the cell's centre lies inside the ``real = (H, W)`` unpadded image."""
    c = cell_centers(hw[0], hw[1], r).to(device)
    return (c[:, 0] <= real[1] - 0.5) & (c[:, 1] <= real[0] - 0.5)


def to_matches(conf: torch.Tensor, mask: torch.Tensor, hw0: tuple[int, int], hw1: tuple[int, int], r: int,
               scale0: tuple[float, float], scale1: tuple[float, float]) -> list[Matches]:
    """``Matches`` with cell-centre keypoints (in input pixels) from a confidence matrix and its match mask."""
    out = []
    c0, c1 = cell_centers(*hw0, r), cell_centers(*hw1, r)
    s0, s1 = torch.tensor(scale0), torch.tensor(scale1)
    for idx0, idx1, scores in extract_matches(conf.cpu(), mask.cpu()):
        kp0, kp1 = (c0[idx0] + 0.5) * s0 - 0.5, (c1[idx1] + 0.5) * s1 - 0.5
        m = torch.arange(len(idx0)).repeat(2, 1).T
        out.append(Matches(m, scores, len(idx0), len(idx0), kp0, kp1))
    return out


class CoarseLoFTRMatcher(ImageMatcher):
    """Coarse LoFTR in PyTorch (module docstring)."""

    max_batch = None

    def __init__(self, conf: CoarseLoFTRMatcherConf) -> None:
        super().__init__(conf)
        self.net = resolve_coarse_loftr(conf.weights, conf.preset, conf.allow_random)
        r = self.net.conf.resolution
        if conf.size is not None and (conf.size[0] % r or conf.size[1] % r or min(conf.size) < r):
            raise ValueError(f"loftr-coarse: size {conf.size[0]}x{conf.size[1]} must be multiples of {r}")

    @torch.inference_mode()
    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> list[Matches]:
        """Match each pair of the batches; see the contract in ``matching.base``."""
        image0, image1 = self.check_images(image0, image1)
        r = self.net.conf.resolution
        x0, s0 = _to_size(image0.float(), self.conf.size, r)
        x1, s1 = _to_size(image1.float(), self.conf.size, r)
        conf = self.net(x0, x1)["conf"]
        hw0, hw1 = self.net.grid(x0.shape[2], x0.shape[3]), self.net.grid(x1.shape[2], x1.shape[3])
        if self.conf.size is None:
            v0 = _valid_cells(hw0, (image0.shape[2], image0.shape[3]), r, conf.device)
            v1 = _valid_cells(hw1, (image1.shape[2], image1.shape[3]), r, conf.device)
            conf = conf * (v0[None, :, None] & v1[None, None, :])
        return to_matches(conf, match_mask(conf, hw0, hw1, self.conf.match), hw0, hw1, r, s0, s1)


@dataclass(frozen=True)
class CoarseLoFTROnnxConf(CoarseLoFTRMatcherConf):
    """``loftr-coarse-onnx``: ``loftr-coarse``'s fields, the ONNX file and onnxruntime's threads.

    ``onnx`` None exports the network of ``weights`` at ``size`` (default 640x480) in memory at build time.
    A file's graph fixes the size and the match conf (its metadata); ``size`` and ``match`` must agree.
    """

    onnx: str | None = None
    num_threads: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        ranges.threads(self)


class CoarseLoFTROnnxMatcher(ImageMatcher):
    """Coarse LoFTR run by onnxruntime on the static graph of ``visloc export loftr-coarse``."""

    max_batch = 1

    def __init__(self, conf: CoarseLoFTROnnxConf) -> None:
        super().__init__(conf)
        from visloc.export import export_onnx, onnx_session

        if conf.onnx is not None:
            self.session = onnx_session(Path(conf.onnx), conf.num_threads, what="Coarse LoFTR ONNX model")
        else:
            net = resolve_coarse_loftr(conf.weights, conf.preset, conf.allow_random)
            w, h = conf.size or (640, 480)
            graph = CoarseLoFTRGraph(net, conf.match)
            self.session = onnx_session(export_onnx(graph, graph.export_spec(height=h, width=w)), conf.num_threads)
        shape = self.session.get_inputs()[0].shape
        self.size = (int(shape[3]), int(shape[2]))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.resolution = int(_json(meta.get("visloc_conf"))["resolution"])
        if conf.size is not None and tuple(conf.size) != self.size:
            raise ValueError(f"loftr-coarse-onnx: size {conf.size} differs from the graph's {self.size}")

    @torch.inference_mode()
    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> list[Matches]:
        """Match one pair: resize to the graph's size, run it, read the mask's matches."""
        image0, image1 = self.check_images(image0, image1)
        x0, s0 = _to_size(image0.float().cpu(), self.size, self.resolution)
        x1, s1 = _to_size(image1.float().cpu(), self.size, self.resolution)
        conf, mask = self.session.run(["conf", "mask"], {"image0": x0.numpy(), "image1": x1.numpy()})
        hw = (self.size[1] // self.resolution, self.size[0] // self.resolution)
        return to_matches(torch.from_numpy(conf), torch.from_numpy(np.asarray(mask, bool)), hw, hw,
                          self.resolution, s0, s1)


def _json(text: str | None) -> dict:
    import json

    if not text:
        raise WeightsError("loftr-coarse-onnx: the ONNX file carries no visloc_conf metadata (export it with "
                           "'visloc export loftr-coarse')")
    return json.loads(text)


def _weights_file(weights: str | None) -> tuple[str, ...]:
    """The file that decides the network: the user's, else the shipped student when installed."""
    from visloc.weights.records import installed_path

    if weights:
        return (weights,)
    shipped = installed_path(SHIPPED)
    return (str(shipped),) if shipped is not None else ()


def _capabilities(conf: CoarseLoFTRMatcherConf) -> Capabilities:
    return Capabilities(frozenset({"matches"}), weights=_weights_file(conf.weights))


def _onnx_capabilities(conf: CoarseLoFTROnnxConf) -> Capabilities:
    files = (conf.onnx,) if conf.onnx else _weights_file(conf.weights)
    return Capabilities(frozenset({"matches"}), weights=files)


MATCHERS.register("loftr-coarse", CoarseLoFTRMatcherConf(), CoarseLoFTRMatcher, capabilities=_capabilities)
MATCHERS.register("loftr-coarse-onnx", CoarseLoFTROnnxConf(), CoarseLoFTROnnxMatcher,
                  capabilities=_onnx_capabilities)
