"""Generalized-mean (GeM) pooling (Radenovic et al., TPAMI 2018) and an L2-normalisation layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeM(nn.Module):
    """Generalized-mean pooling over spatial positions: ``[B, D, H, W] -> [B, D]``.

    ``out = mean(clamp(x, min=eps) ** p) ** (1 / p)``: average pooling at ``p = 1``, tending to max
    pooling as ``p`` grows. The output is not normalised; follow with :class:`L2Norm` for a global
    descriptor.

    Args:
        p: the exponent; must be positive.
        eps: lower clamp of the input, keeping ``x ** p`` defined for non-positive activations.
        learnable: train ``p`` as a parameter (as in cirtorch) instead of a fixed buffer.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"p must be positive, got {p}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = eps
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x [B, D, H, W]`` to ``[B, D]``."""
        if x.dim() != 4:
            raise ValueError(f"x must be [B, D, H, W], got shape {tuple(x.shape)}")
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        """Summarise the settings in ``repr``."""
        return f"p={self.p.item():.4g}, eps={self.eps}, learnable={isinstance(self.p, nn.Parameter)}"


class L2Norm(nn.Module):
    """L2-normalise along ``dim`` (zero vectors stay zero)."""

    def __init__(self, dim: int = 1, eps: float = 1e-12) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x / max(||x||, eps)`` along ``self.dim``."""
        return F.normalize(x, p=2.0, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        """Summarise the settings in ``repr``."""
        return f"dim={self.dim}"
