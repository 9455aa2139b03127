"""The SimCLR projection head (Chen et al. 2020): a 2-layer MLP used in Stage I only, then discarded."""

from __future__ import annotations

from torch import Tensor, nn


class Projector(nn.Module):
    """(N, in_dim) pooled features -> (N, out_dim) embeddings for the InfoNCE loss (paper Eq. 1)."""

    def __init__(self, in_dim: int = 512, hidden: int = 512, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
