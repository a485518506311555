"""ALIKED without its full-resolution 128-channel feature map: the same outputs, about half the time.

kornia's ``ALIKED.extract_dense_map`` upsamples four feature maps to full resolution, concatenates
them into ``[B, 128, H, W]``, L2-normalises every pixel and runs the score head on it; on a CPU at
640x480 that aggregate costs more than half of the network's time, although the descriptor head
(SDDH) reads it at a few thousand points only. Two identities remove it:

- the score head starts with a 1x1 convolution, which commutes with bilinear upsampling
  (``W @ up(x) = up(W @ x)``): each of the four blocks is projected to 8 channels *before* it is
  upsampled;
- bilinear upsampling with ``align_corners=True`` to ``(Hp, Wp)`` is ``grid_sample`` of the coarse map
  at the same normalised coordinate, so the normalised feature of any full-resolution pixel can be
  computed on demand, and SDDH's bilinear read is the weighted sum of four such pixels (zero outside,
  as ``grid_sample``'s zero padding).

Outputs equal kornia's up to float rounding (tested: identical keypoints, descriptor cosine > 0.9999).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.feature.aliked.aliked import ALIKED as KorniaALIKED
from kornia.feature.aliked.aliked import InputPadder
from torch import nn


class SparseALIKED:
    """Runs a (pretrained) kornia ``ALIKED``'s layers with the sparse aggregation above.

    A plain callable, not a module: it holds a reference to ``net`` (which its owner registers), so
    moving or saving the owner moves or saves the weights once.

    Args:
        net: kornia ALIKED (its SDDH without mask and with ``agg_weights``, as every released variant).
    """

    def __init__(self, net: KorniaALIKED) -> None:
        if net.desc_head.mask or net.desc_head.conv2d:
            raise ValueError("SparseALIKED supports SDDH without mask and without conv2d aggregation")
        self.net = net

    def _blocks(self, image: torch.Tensor) -> tuple[list[torch.Tensor], InputPadder]:
        n = self.net
        padder = InputPadder(image.shape[-2], image.shape[-1], 32)
        x1 = n.block1(padder.pad(image))
        x2 = n.block2(n.pool2(x1))
        x3 = n.block3(n.pool4(x2))
        x4 = n.block4(n.pool4(x3))
        return [n.gate(n.conv1(x1)), n.gate(n.conv2(x2)), n.gate(n.conv3(x3)), n.gate(n.conv4(x4))], padder

    def score_map(self, comps: list[torch.Tensor], padder: InputPadder) -> torch.Tensor:
        """``[B, 1, H, W]`` score map, the head's first 1x1 conv applied before upsampling."""
        head = self.net.score_head
        first = head[0]
        if not isinstance(first, nn.Conv2d):  # ALIKED's score head starts with a 1x1 conv
            raise TypeError(f"score_head[0]: expected a Conv2d, got {type(first).__name__}")
        size = comps[0].shape[-2:]
        weights = first.weight.split([c.shape[1] for c in comps], dim=1)
        s = F.conv2d(comps[0], weights[0], first.bias)
        for comp, w in zip(comps[1:], weights[1:], strict=True):
            s = s + F.interpolate(F.conv2d(comp, w), size=size, mode="bilinear", align_corners=True)
        return padder.unpad(torch.sigmoid(head[1:](s)))

    @staticmethod
    def _pixel_features(comps: list[torch.Tensor], padder: InputPadder, ix: torch.Tensor,
                        iy: torch.Tensor) -> torch.Tensor:
        """Normalised 128-d features ``[P, C]`` at integer pixels ``(ix, iy)`` of the unpadded image."""
        px, py = ix + padder._pad[0], iy + padder._pad[2]
        hp, wp = comps[0].shape[-2:]
        feats = [comps[0][0].reshape(comps[0].shape[1], -1).index_select(1, py * wp + px).T]
        grid = torch.stack([2.0 * px / (wp - 1) - 1.0, 2.0 * py / (hp - 1) - 1.0], -1).to(comps[0].dtype)
        for comp in comps[1:]:
            feats.append(F.grid_sample(comp, grid[None, :, None], mode="bilinear", align_corners=True)[0, :, :, 0].T)
        return F.normalize(torch.cat(feats, 1), p=2, dim=1)

    def _bilinear(self, comps: list[torch.Tensor], padder: InputPadder, pos: torch.Tensor, h: int, w: int
                  ) -> torch.Tensor:
        """``grid_sample`` (bilinear, align_corners, zeros) of the feature map at pixel positions ``[P, 2]``."""
        corners = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=pos.device, dtype=pos.dtype)
        xy = pos.floor()[None] + corners[:, None]  # [4, P, 2]: the four neighbouring pixels
        wgt = (1 - (pos[None] - xy).abs()).prod(-1)
        inside = (xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)
        xi = xy[..., 0].clamp(0, w - 1).long().reshape(-1)
        yi = xy[..., 1].clamp(0, h - 1).long().reshape(-1)
        f = self._pixel_features(comps, padder, xi, yi).reshape(4, len(pos), -1)
        return (f * (wgt * inside)[..., None]).sum(0)

    def descriptors(self, comps: list[torch.Tensor], padder: InputPadder, kpts: torch.Tensor, h: int, w: int
                    ) -> torch.Tensor:
        """SDDH on keypoints ``[N, 2]`` in ``[-1, 1]`` (B = 1); returns ``[N, D]`` L2-normalised."""
        sddh = self.net.desc_head
        ks, n_pos = sddh.kernel_size, sddh.n_pos
        wh = torch.tensor([[w - 1, h - 1]], device=kpts.device, dtype=torch.float32)
        kwh = (kpts / 2 + 0.5) * wh
        n = len(kwh)
        # patches of ks x ks pixels, placed exactly as kornia's get_patches places them
        corner = (kwh.long() - ks / 2 + 1).long()
        corner[:, 0] = corner[:, 0].clamp(min=0, max=w - 1 - ks)
        corner[:, 1] = corner[:, 1].clamp(min=0, max=h - 1 - ks)
        r = torch.arange(ks, device=kpts.device)
        gy, gx = torch.meshgrid(r, r, indexing="ij")
        px = (corner[:, None, 0] + gx.reshape(1, -1)).reshape(-1)
        py = (corner[:, None, 1] + gy.reshape(1, -1)).reshape(-1)
        patch = self._pixel_features(comps, padder, px, py).reshape(n, ks, ks, -1).permute(0, 3, 1, 2)
        offset = sddh.offset_conv(patch).clamp(-max(h, w) / 4.0, max(h, w) / 4.0)
        offset = offset[:, :, 0, 0].view(n, 2, n_pos).permute(0, 2, 1)
        pos = (kwh.unsqueeze(1) + offset).reshape(-1, 2)
        feats = self._bilinear(comps, padder, pos, h, w)  # [n * n_pos, C]
        feats = feats.reshape(n, n_pos, -1).permute(0, 2, 1)[..., None]  # [N, C, n_pos, 1]
        feats = torch.selu_(sddh.sf_conv(feats)).squeeze(-1)
        descs = torch.einsum("ncp,pcd->nd", feats, sddh.agg_weights)
        return F.normalize(descs, p=2.0, dim=1)

    def __call__(self, image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``image [B, 3, H, W]`` -> per image: keypoints ``[N, 2]`` (pixels), scores ``[N]``, descriptors ``[N, D]``.

        The network and the detection run on the whole batch; the descriptor head per image.
        """
        h, w = image.shape[-2:]
        comps, padder = self._blocks(image)
        scores_map = self.score_map(comps, padder)
        kpts, kscores, _ = self.net.dkd(scores_map)
        wh = torch.tensor([w - 1, h - 1], device=image.device, dtype=torch.float32)
        out = []
        for b in range(image.shape[0]):
            descs = self.descriptors([c[b:b + 1] for c in comps], padder, kpts[b], h, w)
            out.append((wh * (kpts[b] + 1) / 2.0, kscores[b], descs))
        return out
