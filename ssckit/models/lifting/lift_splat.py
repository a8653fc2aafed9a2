"""Lift-splat for VLScene (spec §2.5; BEVDepth/BRGScene geometry with the KITTI 3×4 projection matrix).

Conventions:
- frustum (D, fH, fW, 3) holds (u, v, d): u = linspace(0, W-1, fW) and v = linspace(0, H-1, fH) in pixels of
  the augmented network input (H, W), d = arange(*dbound) in metres;
- cameras: ``intrins`` (B, N, 3, 4) the 3×4 P (a 3×3 K is taken as P = [K | 0]); ``rots`` (B, N, 3, 3) and
  ``trans`` (B, N, 3) camera → LiDAR (the inverse of velo→cam ``Tr``); ``post_rots`` (B, N, 3, 3) and
  ``post_trans`` (B, N, 3) the image augmentation (pixel' = post_rot · pixel + post_tran); ``bda`` (B, 3, 3)
  the 3-D augmentation (or (B, 4, 4), homogeneous);
- the output grid is (B, C, X, Y, Z); a point p lands in voxel ((p - (bx - dx/2)) / dx) truncated toward zero
  (official ``.long()``; ``truncate_toward_zero=False`` floors instead), and points outside [0, n) are dropped.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

Bound = Sequence[float]


def grid_params(xbound: Bound, ybound: Bound, zbound: Bound) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, bx, nx) float tensors: voxel size, first voxel centre, voxel count per axis ([lo, hi, step] bounds)."""
    rows = (xbound, ybound, zbound)
    dx = torch.tensor([r[2] for r in rows], dtype=torch.float32)
    bx = torch.tensor([r[0] + r[2] / 2.0 for r in rows], dtype=torch.float32)
    nx = torch.tensor([(r[1] - r[0]) / r[2] for r in rows], dtype=torch.float32)
    return dx, bx, nx


def create_frustum(input_size: Sequence[int], downsample: int, dbound: Bound) -> Tensor:
    """(D, fH, fW, 3) frustum of (u, v, d) for an (H, W) input and a stride-``downsample`` feature map."""
    h, w = input_size
    fh, fw = h // downsample, w // downsample
    ds = torch.arange(*dbound, dtype=torch.float32).view(-1, 1, 1).expand(-1, fh, fw)
    n_d = ds.shape[0]
    us = torch.linspace(0, w - 1, fw, dtype=torch.float32).view(1, 1, fw).expand(n_d, fh, fw)
    vs = torch.linspace(0, h - 1, fh, dtype=torch.float32).view(1, fh, 1).expand(n_d, fh, fw)
    return torch.stack((us, vs, ds), dim=-1)


def _as_p(intrins: Tensor) -> Tensor:
    """3×4 P from a 3×4 P or a 3×3 K (P = [K | 0])."""
    return intrins if intrins.shape[-1] == 4 else torch.cat([intrins, torch.zeros_like(intrins[..., :1])], -1)


def camera_mlp_input(intrins: Tensor, post_rots: Tensor, post_trans: Tensor, bda: Tensor, rots: Tensor,
                     trans: Tensor) -> Tensor:
    """(B, N, 30) camera vector in the official order: fx, fy, cx, cy, P[0,3], P[1,3], P[2,3]; post_rot[0,0],
    post_rot[0,1], post_tran[0], post_rot[1,0], post_rot[1,1], post_tran[1]; bda[0,0], bda[0,1], bda[1,0],
    bda[1,1], bda[2,2]; then the 3×4 camera→LiDAR [R | t] row by row."""
    p = _as_p(intrins)
    n = p.shape[1]
    bda = bda[:, None, :3, :3].expand(-1, n, -1, -1)  # (B, N, 3, 3)
    terms = torch.stack([
        p[..., 0, 0], p[..., 1, 1], p[..., 0, 2], p[..., 1, 2], p[..., 0, 3], p[..., 1, 3], p[..., 2, 3],
        post_rots[..., 0, 0], post_rots[..., 0, 1], post_trans[..., 0],
        post_rots[..., 1, 0], post_rots[..., 1, 1], post_trans[..., 1],
        bda[..., 0, 0], bda[..., 0, 1], bda[..., 1, 0], bda[..., 1, 1], bda[..., 2, 2],
    ], dim=-1)
    sensor2lidar = torch.cat([rots, trans.unsqueeze(-1)], dim=-1).flatten(-2)  # (B, N, 12)
    return torch.cat([terms, sensor2lidar], dim=-1)


def frustum_geometry(frustum: Tensor, rots: Tensor, trans: Tensor, intrins: Tensor, post_rots: Tensor,
                     post_trans: Tensor, bda: Tensor) -> Tensor:
    """(B, N, D, fH, fW, 3) LiDAR-frame xyz of every frustum point (official op order, for exact voxel indices).

    Undo the image augmentation, lift (u, v, d) to (u·d, v·d, d), subtract P[:, 3], apply rots · K⁻¹, add trans,
    then apply the 3-D augmentation ``bda``."""
    b, n = trans.shape[:2]
    p = _as_p(intrins)
    pts = frustum - post_trans.view(b, n, 1, 1, 1, 3)
    pts = torch.inverse(post_rots).view(b, n, 1, 1, 1, 3, 3).matmul(pts.unsqueeze(-1))  # (B, N, D, H, W, 3, 1)
    pts = torch.cat((pts[..., :2, :] * pts[..., 2:3, :], pts[..., 2:3, :]), dim=-2)
    pts = pts - p[..., :3, 3].view(b, n, 1, 1, 1, 3, 1)
    combine = rots.matmul(torch.inverse(p[..., :3, :3]))
    pts = combine.view(b, n, 1, 1, 1, 3, 3).matmul(pts).squeeze(-1)
    pts = pts + trans.view(b, n, 1, 1, 1, 3)
    if bda.shape[-1] == 4:
        pts = torch.cat((pts, torch.ones_like(pts[..., :1])), dim=-1)
        return bda.view(b, 1, 1, 1, 1, 4, 4).matmul(pts.unsqueeze(-1)).squeeze(-1)[..., :3]
    return bda.view(b, 1, 1, 1, 1, 3, 3).matmul(pts.unsqueeze(-1)).squeeze(-1)


def voxel_indices(geom: Tensor, dx: Tensor, bx: Tensor, truncate_toward_zero: bool = True) -> Tensor:
    """Long voxel indices (..., 3) of points (..., 3): (p - (bx - dx/2)) / dx, truncated toward zero or floored."""
    rel = (geom - (bx - dx / 2.0)) / dx
    return rel.long() if truncate_toward_zero else rel.floor().long()


def splat(geom: Tensor, depth: Tensor, feat: Tensor, dx: Tensor, bx: Tensor, nx: Sequence[int],
          truncate_toward_zero: bool = True) -> Tensor:
    """Sum-pool the lifted volume depth ⊗ feat into (B, C, X, Y, Z) with one ``index_add``.

    geom (B, N, D, H, W, 3); depth (B, N, D, H, W); feat (B, N, C, H, W). Points whose voxel index falls outside
    [0, nx) are dropped."""
    b, n, d, h, w = depth.shape
    c = feat.shape[2]
    sx, sy, sz = (int(v) for v in nx)
    idx = voxel_indices(geom, dx.to(geom), bx.to(geom), truncate_toward_zero).view(-1, 3)  # (B*N*D*H*W, 3)
    kept = ((idx >= 0) & (idx < torch.tensor([sx, sy, sz], device=idx.device))).all(dim=1)
    point = kept.nonzero().squeeze(1)  # flat (b, n, d, h, w) index of kept points
    batch = point // (n * d * h * w)
    pixel = (point // (d * h * w)) * (h * w) + point % (h * w)  # flat (b, n, h, w) index
    src = depth.reshape(-1)[point].unsqueeze(1) * feat.permute(0, 1, 3, 4, 2).reshape(-1, c)[pixel]  # (P, C)
    vi = idx[point]
    target = ((batch * sx + vi[:, 0]) * sy + vi[:, 1]) * sz + vi[:, 2]
    out = src.new_zeros(b * sx * sy * sz, c).index_add(0, target, src)
    return out.view(b, sx, sy, sz, c).permute(0, 4, 1, 2, 3).contiguous()


class LiftSplat(nn.Module):
    """Frustum + geometry + voxel pooling; the frustum and grid constants are non-persistent buffers.

    ``input_size`` (H, W) of the network input (official (384, 1280)); ``downsample`` of the feature map (8);
    bounds ``[lo, hi, step]`` (official x [0, 51.2, 0.4], y [-25.6, 25.6, 0.4], z [-2, 4.4, 0.4],
    d [2, 58, 0.5])."""

    def __init__(self, input_size: Sequence[int], downsample: int, xbound: Bound, ybound: Bound, zbound: Bound,
                 dbound: Bound, truncate_toward_zero: bool = True):
        super().__init__()
        dx, bx, nx = grid_params(xbound, ybound, zbound)
        self.register_buffer("dx", dx, persistent=False)
        self.register_buffer("bx", bx, persistent=False)
        self.register_buffer("nx", nx, persistent=False)
        self.register_buffer("frustum", create_frustum(input_size, downsample, dbound), persistent=False)
        self.grid_shape = tuple(int(round(v)) for v in nx.tolist())
        self.depth_bins = self.frustum.shape[0]
        self.truncate_toward_zero = truncate_toward_zero

    def mlp_input(self, rots: Tensor, trans: Tensor, intrins: Tensor, post_rots: Tensor, post_trans: Tensor,
                  bda: Tensor) -> Tensor:
        """(B, N, 30) camera vector for the camera-aware depth net."""
        return camera_mlp_input(intrins, post_rots, post_trans, bda, rots, trans)

    def geometry(self, rots: Tensor, trans: Tensor, intrins: Tensor, post_rots: Tensor, post_trans: Tensor,
                 bda: Tensor) -> Tensor:
        """(B, N, D, fH, fW, 3) LiDAR-frame points of the frustum."""
        return frustum_geometry(self.frustum, rots, trans, intrins, post_rots, post_trans, bda)

    def forward(self, depth: Tensor, feat: Tensor, rots: Tensor, trans: Tensor, intrins: Tensor,
                post_rots: Tensor, post_trans: Tensor, bda: Tensor) -> Tensor:
        """depth (B, [N,] D, fH, fW) probabilities, feat (B, [N,] C, fH, fW) → (B, C, X, Y, Z)."""
        if depth.dim() == 4:
            depth, feat = depth.unsqueeze(1), feat.unsqueeze(1)
        geom = self.geometry(rots, trans, intrins, post_rots, post_trans, bda)
        return splat(geom, depth, feat, self.dx, self.bx, self.grid_shape, self.truncate_toward_zero)
