"""Event windows -> Event-VPR global descriptors: a representation and the network, as one module.

``EventVPRWindows(representation, network)(windows) -> [N, D]`` computes the dense representation of
the windows (one scatter, on the network's device) and runs ``models.event_vpr.EventVPR`` on it. With
``est`` the representation is a submodule, so the kernel MLP trains with the network and its
parameters sit in the state dict under ``representation.*`` (the network's under ``network.*``); a
voxel grid has no parameters. ``build_event_vpr(conf, imagenet=...)`` builds both from an
``EventVPRConf``.

A visloc ``event-vpr`` checkpoint is ``weights.checkpoint.save_model(path, "event-vpr", EventVPRWindows)``:
the conf is the network's, the state dict the module's (``visloc export event-vpr`` reads its
``network.*`` part).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from visloc.events.est import EST
from visloc.events.representations import Representation, TimeRanges, Windows
from visloc.models.event_vpr import EventVPR, EventVPRConf
from visloc.registry import REPRESENTATIONS
from visloc.weights.converters.resnet_imagenet import load_imagenet_backbone


class EventVPRWindows(nn.Module):
    """Event windows of one sensor -> L2-normalised descriptors ``[N, D]``.

    Args:
        representation: ``voxel-grid`` (a ``Representation``) or ``est`` (an ``EST`` module), with the
            network conf's representation and bins.
        network: the ``EventVPR`` network.

    Raises:
        ValueError: the representation is not the one the network's conf names (name, bins or channels).
    """

    def __init__(self, representation: Representation | EST, network: EventVPR) -> None:
        super().__init__()
        spec, conf = representation.input_spec(), network.conf
        if (spec.representation, spec.bins, spec.channels) != (conf.representation, conf.bins, conf.channels):
            raise ValueError(f"representation: {spec.representation} with {spec.bins} bins ({spec.channels} channels) "
                             f"does not fit a network for {conf.representation} with {conf.bins} bins "
                             f"({conf.channels} channels)")
        self.representation = representation
        self.network = network

    @property
    def conf(self) -> EventVPRConf:
        """The network's conf (it names the representation and its bins)."""
        return self.network.conf

    def dense(self, windows: Windows, t_ranges: TimeRanges = None) -> torch.Tensor:
        """The representation ``[N, C, H, W]`` of ``windows``, on the network's device."""
        device = next(self.network.parameters()).device
        return self.representation.batch(windows, t_ranges, device=device)

    def forward(self, windows: Windows, t_ranges: TimeRanges = None) -> torch.Tensor:
        """Descriptors ``[N, D]`` of ``N`` windows (``t_ranges``: see ``events.representations``)."""
        return self.network(self.dense(windows, t_ranges))


def build_event_vpr(conf: EventVPRConf | None = None, imagenet: str | Path | None = None,
                    representation: Sequence[str] = ()) -> EventVPRWindows:
    """The representation and the network of ``conf``, the backbone from ImageNet weights when given.

    Args:
        conf: the network (default ``EventVPRConf()``: EST with 9 bins, 224, 32 x 512 NetVLAD).
        imagenet: a torchvision ``resnet34`` state dict file (loaded with ``weights_only=True``); its
            first conv's RGB filters are adapted to the representation's channels
            (``load_imagenet_backbone(..., stem="mean")``). None: random (torchvision's initialisation).
        representation: more overrides of the representation's conf (``normalization=tonic``...);
            ``bins`` comes from ``conf``.

    Raises:
        WeightsError: ``imagenet`` is missing, not a torch file, or not a ResNet-34 (one line).
    """
    conf = conf if conf is not None else EventVPRConf()
    rep = REPRESENTATIONS.build(conf.representation, [f"bins={conf.bins}", *representation])
    network = EventVPR(conf)
    if imagenet is not None:
        load_imagenet_backbone(network, imagenet, stem="mean")
    return EventVPRWindows(rep, network)


__all__ = ["EventVPRWindows", "build_event_vpr"]
