"""VGG16-NetVLAD (Arandjelovic et al., CVPR 2016): VGG16 cut at conv5_3, NetVLAD, optional PCA whitening.

The layout follows the official model (``vd16_*_conv5_3_vlad_preL2_intra_white``) and
pytorch-NetVlad: VGG16 ``features`` without the last ReLU and max-pool, L2-normalised conv5_3
descriptors, NetVLAD with intra-normalisation, then a learned linear whitening (``W x + b``) and a
final L2 normalisation. Construction builds random weights and never reads or downloads anything;
trained weights come from :mod:`visloc.weights.converters.netvlad`.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn
from torch.jit import is_tracing  # pyright: ignore[reportPrivateImportUsage]  # public, not in torch.jit.__all__
from torchvision.models.vgg import cfgs, make_layers

from visloc.errors import InputError
from visloc.export.spec import ExportSpec
from visloc.models.heads.netvlad import NetVLAD

VGG_DIM = 512
#: ONNX graph of ``NetVLADVGG16.forward`` (``export_spec``)
ONNX_INPUT = "image"
ONNX_OUTPUT = "global_descriptor"
#: the smallest image side: conv5_3 sits after four 2x2 max-pools (stride 16)
MIN_SIDE = 16


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
        if not is_tracing() and (image.dim() != 4 or image.shape[1] != 3):
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

    def export_spec(self, batch: int = 1, height: int = 480, width: int = 640, dynamic: bool = True,
                    seed: int = 0) -> ExportSpec:
        """ONNX spec of ``forward``: ``image [B, 3, H, W]`` in [0, 1] -> ``global_descriptor [B, G]``.

        Args:
            batch: the example's ``B``.
            height: the example's ``H`` (>= 16).
            width: the example's ``W`` (>= 16).
            dynamic: dynamic batch, height and width; else static shapes.
            seed: seed of the random images.

        The parity check also runs an image of about half the example's size plus an odd number of
        pixels when dynamic (another image of the example's size when static). The ONNX metadata
        ``visloc_netvlad_vgg16`` holds K, G and the preprocessing as JSON.
        """
        if min(height, width) < MIN_SIDE or batch < 1:
            raise InputError(f"netvlad-vgg16 export: need batch >= 1 and sides >= {MIN_SIDE}, got "
                             f"{batch}x{height}x{width}")
        other = (max(MIN_SIDE, height // 2 + 7), max(MIN_SIDE, width // 2 + 13)) if dynamic else (height, width)
        gen = torch.Generator().manual_seed(seed)
        images = [{ONNX_INPUT: torch.rand(batch, 3, h, w, generator=gen)} for h, w in ((height, width), other)]
        axes = {ONNX_INPUT: {0: "batch", 2: "height", 3: "width"}, ONNX_OUTPUT: {0: "batch"}}
        meta = {"num_clusters": self.pool.num_clusters, "whiten_dim": self.whiten.out_features if self.whiten else None,
                "input_scale": float(self.input_scale), "input_mean": self.input_mean.tolist(),
                "input_std": self.input_std.tolist()}
        return ExportSpec(images[0], (ONNX_OUTPUT,), axes if dynamic else None, check_inputs=images[1:], atol=1e-4,
                          metadata={"visloc_netvlad_vgg16": json.dumps(meta, sort_keys=True)})
