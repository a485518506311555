"""SuperPoint (DeTone et al., CVPR-W 2018) in the layout of MagicLeap's ``superpoint_v1.pth``.

The official file is a plain state dict of ``SuperPointNet`` (SuperPointPretrainedNetwork,
``demo_superpoint.py``): a VGG-style encoder ``conv1a, conv1b, (pool), conv2a, conv2b, (pool),
conv3a, conv3b, (pool), conv4a, conv4b`` (64, 64, 128, 128 channels, ReLU after each), a detector
head ``convPa`` (3x3, 256, ReLU) -> ``convPb`` (1x1, 65 logits) and a descriptor head ``convDa``
(3x3, 256, ReLU) -> ``convDb`` (1x1, 256) L2-normalised. Input: gray ``[B, 1, H, W]`` in ``[0, 1]``.
Construction never reads a file; ``visloc.weights.converters.superpoint.load_superpoint`` loads the
user's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: (name, in, out, kernel) of every convolution, in the official order
LAYERS = (
    ("conv1a", 1, 64, 3),
    ("conv1b", 64, 64, 3),
    ("conv2a", 64, 64, 3),
    ("conv2b", 64, 64, 3),
    ("conv3a", 64, 128, 3),
    ("conv3b", 128, 128, 3),
    ("conv4a", 128, 128, 3),
    ("conv4b", 128, 128, 3),
    ("convPa", 128, 256, 3),
    ("convPb", 256, 65, 1),
    ("convDa", 128, 256, 3),
    ("convDb", 256, 256, 1),
)


class SuperPointNet(nn.Module):
    """SuperPoint: gray ``[B, 1, H, W]`` -> ``logits [B, 65, H/8, W/8]``, ``descriptors [B, 256, H/8, W/8]``.

    ``H`` and ``W`` are multiples of 8; descriptors have unit norm along channels.
    """

    # the layers set from LAYERS in __init__ (by name, so the state-dict keys are the original ones)
    conv4a: nn.Conv2d
    conv4b: nn.Conv2d
    convPa: nn.Conv2d
    convPb: nn.Conv2d
    convDa: nn.Conv2d
    convDb: nn.Conv2d

    def __init__(self) -> None:
        super().__init__()
        for name, c_in, c_out, k in LAYERS:
            setattr(self, name, nn.Conv2d(c_in, c_out, k, stride=1, padding=k // 2))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the encoder and both heads; see the class docstring."""
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"image: expected [B, 1, H, W], got {tuple(image.shape)}")
        x = image
        for a, b in (("conv1a", "conv1b"), ("conv2a", "conv2b"), ("conv3a", "conv3b")):
            x = F.max_pool2d(F.relu(getattr(self, b)(F.relu(getattr(self, a)(x)))), 2, 2)
        x = F.relu(self.conv4b(F.relu(self.conv4a(x))))
        logits = self.convPb(F.relu(self.convPa(x)))
        desc = F.normalize(self.convDb(F.relu(self.convDa(x))), p=2.0, dim=1)
        return {"logits": logits, "descriptors": desc}

