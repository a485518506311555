"""PCA whitening of global descriptors, learned from a set of descriptors (cirtorch's ``pcawhitenlearn``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.jit import is_tracing  # pyright: ignore[reportPrivateImportUsage]  # public, not in torch.jit.__all__


class PCAWhitening(nn.Module):
    """Centre, project (optionally whitening) and L2-normalise: ``[B, dim_in] -> [B, dim_out]``.

    ``forward(x) = normalize((x - mean) @ projection.T)``. The ``mean [dim_in]`` and
    ``projection [dim_out, dim_in]`` buffers travel in the ``state_dict``; before :meth:`fit` the
    module is a centred truncation to the first ``dim_out`` coordinates.

    Args:
        dim_in: input descriptor size D.
        dim_out: output size, at most ``dim_in``.
    """

    mean: torch.Tensor
    projection: torch.Tensor

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        if dim_in < 1 or not 1 <= dim_out <= dim_in:
            raise ValueError(f"need 1 <= dim_out <= dim_in, got dim_in={dim_in}, dim_out={dim_out}")
        self.dim_in = dim_in
        self.dim_out = dim_out
        self.register_buffer("mean", torch.zeros(dim_in))
        self.register_buffer("projection", torch.eye(dim_out, dim_in))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, whiten: bool = True, eps: float = 1e-6) -> PCAWhitening:
        """Learn the mean and projection from descriptors ``x [N, dim_in]``; returns ``self``.

        The covariance of the centred descriptors is eigen-decomposed in float64; the projection
        keeps the ``dim_out`` eigenvectors of largest eigenvalue, each divided by
        ``sqrt(eigenvalue + eps)`` when ``whiten`` (so the projected training data has about
        identity covariance), and stored in float32. Each eigenvector's sign is fixed so its
        largest-magnitude component is positive, making the result independent of the solver.
        """
        if x.dim() != 2 or x.shape[1] != self.dim_in:
            raise ValueError(f"x must be [N, {self.dim_in}], got shape {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"need at least 2 descriptors to fit, got {x.shape[0]}")
        x64 = x.detach().to(device="cpu", dtype=torch.float64)
        mean = x64.mean(dim=0)
        xc = x64 - mean
        cov = xc.T @ xc / x64.shape[0]
        eigval, eigvec = torch.linalg.eigh((cov + cov.T) / 2)  # ascending order
        order = torch.argsort(eigval, descending=True)[: self.dim_out]
        eigval, eigvec = eigval[order].clamp(min=0.0), eigvec[:, order]
        pivot = eigvec.abs().argmax(dim=0)
        signs = torch.sign(eigvec[pivot, torch.arange(self.dim_out)])
        projection = (eigvec * signs).T
        if whiten:
            projection = projection / torch.sqrt(eigval + eps)[:, None]
        self.mean.copy_(mean.to(self.mean))
        self.projection.copy_(projection.to(self.projection))
        return self

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Centre and project ``x [B, dim_in]`` to ``[B, dim_out]`` without the final normalisation."""
        if not is_tracing() and (x.dim() != 2 or x.shape[1] != self.dim_in):
            raise ValueError(f"x must be [B, {self.dim_in}], got shape {tuple(x.shape)}")
        return (x - self.mean) @ self.projection.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten ``x [B, dim_in]`` to L2-normalised ``[B, dim_out]``."""
        return F.normalize(self.project(x), p=2.0, dim=1)

    def extra_repr(self) -> str:
        """Summarise the settings in ``repr``."""
        return f"dim_in={self.dim_in}, dim_out={self.dim_out}"
