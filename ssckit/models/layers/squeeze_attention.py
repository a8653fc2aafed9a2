"""Deformable "squeeze" attention: a 3D voxel volume folded into a 2D map, then plain 2D MSDA (Symphonies §6).

A level of shape (X, Y, Z), flattened x-major (index (x*Y + y)*Z + z), becomes a 2D map of X*Z rows
(row = x*Z + z) by Y columns. A normalized 3D reference (x, y, z) becomes the 2D reference (col, row):
- ``z_offset_quirk=True`` (official): col = y, row = x + (z - 0.5) / Z. The official code divides by Z where X
  was meant, so the row drifts by up to Z/2 x-cells depending on z.
- ``z_offset_quirk=False`` (corrected row): with the voxel indices i, k recovered from the references
  (i = x*(X-1), k = z*(Z-1) for the official (S-1) normalization; i = x*X - 0.5, k = z*Z - 0.5 with
  ``centred_refs``, the (i+0.5)/S convention), row = (i*Z + k + 0.5) / (X*Z), i.e. the centre of row i*Z + k.
  The column stays y.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ssckit.ops.msda import MultiScaleDeformableAttention


class DeformableSqueezeAttention(nn.Module):
    """MSDA over squeezed 3D volumes; ``attns.0`` holds the MSDA parameters (official key layout)."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 1, num_points: int = 4,
                 dropout: float = 0.1, add_identity: bool = True, z_offset_quirk: bool = True,
                 centred_refs: bool = False):
        super().__init__()
        self.z_offset_quirk = z_offset_quirk
        self.centred_refs = centred_refs  # references are (i + 0.5) / S instead of i / (S - 1)
        self.attns = nn.ModuleList([MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points,
                                                                  dropout, add_identity)])

    def squeeze(self, value: Tensor, reference_points: Tensor, spatial_shapes: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """value (B, Nv, C) x-major per level; reference_points (B, Nq, L, 3) normalized (x, y, z);
        spatial_shapes (L, 3) (X, Y, Z) -> 2D value (B, Nv, C), 2D reference (B, Nq, L, 2) as (col, row) and
        2D shapes (L, 2) as (h, w) = (X*Z, Y)."""
        b, _, c = value.shape
        shapes = [tuple(int(s) for s in row) for row in spatial_shapes.tolist()]
        levels = value.split([sx * sy * sz for sx, sy, sz in shapes], dim=1)
        maps = [lv.reshape(b, sx, sy, sz, c).transpose(2, 3).reshape(b, sx * sz * sy, c)  # (x, z, y)
                for lv, (sx, sy, sz) in zip(levels, shapes)]
        value2d = maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)
        shp = spatial_shapes.to(reference_points.dtype)  # (L, 3)
        x, y, z = reference_points.unbind(-1)
        if self.z_offset_quirk:
            row = x + (z - 0.5) / shp[:, 2]
        else:
            sx, sz = shp[:, 0], shp[:, 2]
            i, k = (x * sx - 0.5, z * sz - 0.5) if self.centred_refs else (x * (sx - 1), z * (sz - 1))
            row = (i * sz + k + 0.5) / (sx * sz)
        ref2d = torch.stack([y, row], dim=-1)
        shapes2d = torch.stack([spatial_shapes[:, 0] * spatial_shapes[:, 2], spatial_shapes[:, 1]], dim=-1)
        return value2d, ref2d, shapes2d

    def forward(self, query: Tensor, value: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                query_pos: Optional[Tensor] = None, identity: Optional[Tensor] = None,
                value_padding_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Nq, C); value (B, Nv, C); see :meth:`squeeze`. ``value_padding_mask`` (B, Nv) in the
        x-major 3D order. -> (B, Nq, C)."""
        value2d, ref2d, shapes2d = self.squeeze(value, reference_points, spatial_shapes)
        if value_padding_mask is not None:
            value_padding_mask = self.squeeze(value_padding_mask[..., None], reference_points,
                                              spatial_shapes)[0][..., 0]
        return self.attns[0](query, value2d, ref2d, shapes2d, query_pos=query_pos, identity=identity,
                             value_padding_mask=value_padding_mask)
