"""VGG16-NetVLAD (Arandjelovic et al., CVPR 2016): VGG16 cut at conv5_3, NetVLAD, optional PCA whitening.

The layout follows the official model (``vd16_*_conv5_3_vlad_preL2_intra_white``) and
pytorch-NetVlad: VGG16 ``features`` without the last ReLU and max-pool, L2-normalised conv5_3
descriptors, NetVLAD with intra-normalisation, then a learned linear whitening (``W x + b``) and a
final L2 normalisation. Construction builds random weights and never reads or downloads anything;
trained weights come from :mod:`visloc.weights.converters.netvlad`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from visloc.models.heads.netvlad import NetVLAD

VGG_DIM = 512


class NetVLADVGG16(nn.Module):
    """RGB images ``[B, 3, H, W]`` in [0, 1] -> L2-normalised global descriptors ``[B, G]``.

    ``G = whiten_dim`` with whitening, else ``num_clusters * 512`` (cluster-major, ``k * 512 + d``).

    Preprocessing is part of the module: ``(image * input_scale - input_mean) / input_std`` per
    channel, from buffers the weight converters set. The MatConvNet model expects 0-255 images minus
    its ``averageImage`` (scale 255, that mean, std 1); pytorch-NetVlad expects torchvision's ImageNet
    normalisation of [0, 1] images. Either way ``forward`` takes [0, 1] images.

    Args:
        num_clusters: K, the number of NetVLAD clusters.
        whiten_dim: output size of the whitening layer, or None for no whitening.
    """

    input_scale: torch.Tensor
    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, num_clusters: int = 64, whiten_dim: int | None = 4096) -> None:
        super().__init__()
        if whiten_dim is not None and whiten_dim < 1:
            raise ValueError(f"whiten_dim must be positive or None, got {whiten_dim}")
        layers = list(make_layers(cfgs["D"], batch_norm=False).children())
        self.encoder = nn.Sequential(*layers[:-2])  # up to conv5_3: drop its ReLU and the last max-pool
        self.pool = NetVLAD(num_clusters, VGG_DIM, normalize_input=True)
        self.whiten = nn.Linear(self.pool.out_dim, whiten_dim) if whiten_dim is not None else None
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("input_mean", torch.zeros(3))
        self.register_buffer("input_std", torch.ones(3))

    @property
    def out_dim(self) -> int:
        """Size of the global descriptor."""
        return self.whiten.out_features if self.whiten is not None else self.pool.out_dim

    @torch.no_grad()
    def set_preprocessing(self, scale: float, mean: torch.Tensor, std: torch.Tensor) -> NetVLADVGG16:
        """Set the input scale and the per-channel ``mean [3]`` and ``std [3]`` (in scaled units)."""
        if tuple(mean.shape) != (3,) or tuple(std.shape) != (3,):
            raise ValueError(f"mean and std must be [3], got {tuple(mean.shape)}, {tuple(std.shape)}")
        if scale <= 0 or bool((std <= 0).any()):
            raise ValueError("scale and std must be positive")
        self.input_scale.fill_(float(scale))
        self.input_mean.copy_(mean.to(self.input_mean))
        self.input_std.copy_(std.to(self.input_std))
        return self

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] RGB ``[B, 3, H, W]`` to the network's input range."""
        if not torch.jit.is_tracing() and (image.dim() != 4 or image.shape[1] != 3):
            raise ValueError(f"image must be [B, 3, H, W], got shape {tuple(image.shape)}")
        return (image * self.input_scale - self.input_mean[:, None, None]) / self.input_std[:, None, None]

    def aggregate(self, features: torch.Tensor) -> torch.Tensor:
        """conv5_3 maps ``[B, 512, h, w]`` -> global descriptors ``[B, G]`` (NetVLAD, whitening, L2)."""
        desc = self.pool(features)
        if self.whiten is not None:
            desc = F.normalize(self.whiten(desc), p=2.0, dim=1)
        return desc

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Describe [0, 1] RGB images ``[B, 3, H, W]`` with ``[B, G]`` descriptors."""
        return self.aggregate(self.encoder(self.preprocess(image)))
