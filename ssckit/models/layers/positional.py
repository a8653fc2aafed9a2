"""Learnable factorized positional encoding of a voxel grid (Symphonies ``LearnableSqueezePositionalEncoding``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class LearnableSqueezePositionalEncoding(nn.Module):
    """Three tables E_i of (n_i * s_i) rows and ``embed_dims // 2`` columns, concatenated and projected.

    The encoded grid is (n0, n1, n2 * s0 * s1 * s2), i.e. the folded z axis holds (zc, a, b, c) with
    k = ((zc*s0 + a)*s1 + b)*s2 + c, and voxel (x, y, k) takes E0[x*s0 + a], E1[y*s1 + b], E2[zc*s2 + c].
    With the official ``(128, 128, 2)`` / ``(2, 2, 1)`` this covers the 128 x 128 x 8 decode grid.
    ``squeeze_dims=(1, 1, 1)`` is a plain factorized x/y/z encoding.
    """

    def __init__(self, num_embeds: tuple[int, int, int], embed_dims: int,
                 squeeze_dims: tuple[int, int, int] = (2, 2, 1)):
        super().__init__()
        if len(num_embeds) != 3 or len(squeeze_dims) != 3:
            raise ValueError("num_embeds and squeeze_dims must have 3 entries (x, y, z)")
        self.num_embeds = tuple(int(n) for n in num_embeds)
        self.squeeze_dims = tuple(int(s) for s in squeeze_dims)
        self.embeds = nn.ModuleList([nn.Embedding(n * s, embed_dims // 2)
                                     for n, s in zip(self.num_embeds, self.squeeze_dims)])
        self.proj = nn.Linear(embed_dims // 2 * 3, embed_dims)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        (n0, n1, n2), (s0, s1, s2) = self.num_embeds, self.squeeze_dims
        return n0, n1, n2 * s0 * s1 * s2

    def forward(self) -> Tensor:
        """-> (1, X*Y*Z, embed_dims), x-major over :attr:`grid_shape`."""
        (n0, n1, n2), (s0, s1, s2) = self.num_embeds, self.squeeze_dims
        full = (n0, n1, n2, s0, s1, s2)
        e0, e1, e2 = (emb.weight for emb in self.embeds)
        d = e0.shape[-1]
        parts = [e0.view(n0, 1, 1, s0, 1, 1, d).expand(*full, d),  # (x, ., ., a, ., .)
                 e1.view(1, n1, 1, 1, s1, 1, d).expand(*full, d),  # (., y, ., ., b, .)
                 e2.view(1, 1, n2, 1, 1, s2, d).expand(*full, d)]  # (., ., zc, ., ., c)
        embed = torch.cat(parts, dim=-1).reshape(1, -1, 3 * d)  # (1, X*Y*Z, 3d), k = (zc, a, b, c)
        return self.proj(embed)
