"""FLoSP (MonoScene's Features Line of Sight Projection): the 2D -> 3D alternative of the Symphonies ablation
(paper Table 3), used instead of the depth-based voxel proposal.

Every voxel of the decode grid inside the camera frustum samples each image level bilinearly at its own projected
centre (the same normalized ``ref_pix`` (x, y) = ((u+0.5)/W, (v+0.5)/H) that the Symphonies decoder computes;
align_corners=False, zero padding) and the levels are summed. Voxels outside the FOV get zeros. No parameters.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def flosp(feats: Sequence[Tensor], ref_pix: Tensor, fov_mask: Tensor) -> Tensor:
    """feats: L maps (B, C, h_l, w_l); ref_pix (B, N, 2) normalized (x, y) in [0, 1]; fov_mask (B, N) bool.
    -> (B, N, C) summed samples, zero outside the FOV."""
    grid = (ref_pix * 2 - 1).unsqueeze(1).to(feats[0].dtype)  # (B, 1, N, 2) in [-1, 1]
    out = None
    for f in feats:  # one grid_sample per level (L is 3); every voxel and channel at once
        s = F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, 1, N)
        out = s if out is None else out + s
    out = out[:, :, 0].transpose(1, 2)  # (B, N, C)
    return out * fov_mask[..., None].to(out.dtype)


class FLoSP(nn.Module):
    """Module wrapper of :func:`flosp` (parameter-free)."""

    def forward(self, feats: Sequence[Tensor], ref_pix: Tensor, fov_mask: Tensor) -> Tensor:
        return flosp(feats, ref_pix, fov_mask)
