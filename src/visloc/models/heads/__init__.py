"""Global aggregation heads: local feature maps ``[B, D, H, W]`` -> global descriptors ``[B, G]``."""

from visloc.models.heads.arcface import ArcFaceHead
from visloc.models.heads.gem import GeM, L2Norm
from visloc.models.heads.netvlad import NetVLAD
from visloc.models.heads.whitening import PCAWhitening

__all__ = ["ArcFaceHead", "GeM", "L2Norm", "NetVLAD", "PCAWhitening"]
