"""Depth-based voxel proposal (Symphonies §5): back-project every pixel with its depth, mark the voxels it hits,
and refine only those voxels' embeddings with deformable attention into the image features.

Coordinate conventions: voxel indices (x, y, z) over the decode grid (X, Y, Z), tokens flattened x-major
((x*Y + y)*Z + z); pixels (u, v) = (column, row); image references normalized (x, y) = ((u+0.5)/W, (v+0.5)/H).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.data.geometry import pix2vox_torch
from ssckit.models.layers.token_select import gather_tokens, scatter_selected_tokens, select_tokens
from ssckit.models.layers.transformer import DeformableTransformerLayer

# Back-projection of every pixel (Symphonies ``pix2vox``) is :func:`ssckit.data.geometry.pix2vox_torch` (with
# ``rounding=None``; bit-identical to the former copy here). The name stays importable for ssckit.models.lifting.
pix2vox = pix2vox_torch


def pixel_grid(image_shape: Sequence[int]) -> Tensor:
    """(2, H, W) float pixel coordinates (u, v) of an (H, W) image."""
    h, w = image_shape
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                          indexing="ij")
    return torch.stack([u, v])


def voxel_hit_mask(vox_idx: Tensor, grid_shape: Sequence[int]) -> Tensor:
    """vox_idx (B, P, 3) long -> (B, X*Y*Z) bool: voxels hit by at least one in-grid point."""
    sx, sy, sz = grid_shape
    b = vox_idx.shape[0]
    shape = vox_idx.new_tensor([sx, sy, sz])
    keep = ((vox_idx >= 0) & (vox_idx < shape)).all(dim=-1)  # (B, P)
    flat = (vox_idx[..., 0] * sy + vox_idx[..., 1]) * sz + vox_idx[..., 2]
    flat = torch.where(keep, flat, torch.zeros_like(flat))
    hits = torch.zeros(b, sx * sy * sz, dtype=torch.int32, device=vox_idx.device)
    hits.scatter_add_(1, flat, keep.to(torch.int32))  # out-of-grid points add 0
    return hits > 0


def downsample_flat_z(x: Tensor, src_shape: Sequence[int], dst_shape: Sequence[int]) -> Tensor:
    """Official ``interpolate_flatten(..., 'trilinear')``: resize x-major flattened voxel data (B, N) or (B, N, C)
    from src_shape to dst_shape in float, then cast back to the input dtype (int truncates, bool = any)."""
    squeeze = x.dim() == 2
    xc = x[..., None] if squeeze else x
    b, _, c = xc.shape
    vol = xc.transpose(1, 2).reshape(b, c, *src_shape).float()  # (B, C, X, Y, Z')
    out = F.interpolate(vol, size=tuple(dst_shape), mode="trilinear", align_corners=False)
    out = out.flatten(2).transpose(1, 2).to(x.dtype)  # (B, N, C)
    return out[..., 0] if squeeze else out


class VoxelProposalLayer(nn.Module):
    """Refine the proposal voxels' embeddings: one pre-LN deformable layer (queries = scene embeddings + scene PE
    at those voxels, reference = each voxel's own projected centre); other voxels keep their input embedding."""

    def __init__(self, embed_dims: int, num_heads: int = 8, num_levels: int = 3, num_points: int = 4,
                 mlp_ratio: float = 4, dropout: float = 0.1, add_identity: bool = True):
        super().__init__()
        self.attn = DeformableTransformerLayer(embed_dims, num_heads, num_levels, num_points, mlp_ratio, dropout,
                                               add_identity)

    def forward(self, scene: Tensor, feats: Tensor, feat_shapes: Tensor, proposal_mask: Tensor, ref_pix: Tensor,
                scene_pos: Optional[Tensor] = None) -> Tensor:
        """scene (B, N, C) tokens; feats (B, Nf, C) flattened levels with feat_shapes (L, 2) (h, w);
        proposal_mask (B, N) bool; ref_pix (B, N, 2) normalized (x, y); scene_pos (B, N, C). -> (B, N, C)."""
        sel = select_tokens(proposal_mask)
        if sel.index.shape[1] == 0:
            return scene
        query = gather_tokens(scene, sel.index)
        pos = gather_tokens(scene_pos, sel.index) if scene_pos is not None else None
        ref = gather_tokens(ref_pix, sel.index)[:, :, None, :].expand(-1, -1, feat_shapes.shape[0], -1)
        out = self.attn(query, feats, ref, feat_shapes, query_pos=pos)
        return scatter_selected_tokens(scene, out, sel)
