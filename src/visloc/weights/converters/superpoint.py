"""MagicLeap's ``superpoint_v1.pth`` (a user path) -> :class:`visloc.models.superpoint.SuperPointNet`."""

from __future__ import annotations

from pathlib import Path

from visloc.models.superpoint import SuperPointNet
from visloc.weights.load import WeightsError, as_state_dict, safe_load


def load_superpoint(path: str | Path) -> SuperPointNet:
    """Build ``SuperPointNet`` from MagicLeap's ``superpoint_v1.pth`` (a state dict; ``module.`` prefixes removed)."""
    what = "SuperPoint weights"
    sd = as_state_dict(safe_load(path, what), path, what)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    net = SuperPointNet()
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise WeightsError(f"{path}: not superpoint_v1.pth weights ({str(e).splitlines()[0][:100]})") from None
    return net.eval()
