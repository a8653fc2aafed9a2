"""VLScene's auxiliary point head (training only; OccFormer ``OccHead`` point branch, spec §2.8).

For each LiDAR point of the left-image FOV:
    v = trilinear sample of the voxel features (B, C, X, Y, Z) at the point  (grid_sample, align_corners=False,
        zeros outside; the scene box [lo, hi] maps to [-1, 1])
    i = img_feat_reduce(bilinear sample of the stride-8 image map at the point's pixel), zeroed unless the point
        lies strictly inside the image and in front of the camera
    w = softmax(point_soft_weights(v))                                   (2 weights)
    logits = point_occ_mlp(w0 * v + w1 * i)                              (fc1 -> GELU -> fc2)

Official quirk (``swap_voxel_axes``, training only, default corrected): the official code feeds (x, y, z) to
``grid_sample`` on a (C, X, Y, Z) volume, whose grid order is (last, middle, first) = (Z, Y, X), so a point's x
indexes the z axis and its z the x axis. ``swap_voxel_axes=True`` reproduces that. Attribute names equal the
official ``pts_bbox_head`` sub-keys (``img_feat_reduce``, ``point_soft_weights``, ``point_occ_mlp``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Mlp(nn.Sequential):
    """fc1 -> GELU -> fc2 (the official ``Mlp``; no dropout)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.add_module("fc1", nn.Linear(in_features, hidden_features))
        self.add_module("act", nn.GELU())
        self.add_module("fc2", nn.Linear(hidden_features, out_features))


class PointHead(nn.Module):
    """Per-point class logits from sampled voxel + image features.

    ``scene_lo`` / ``scene_hi``: (x, y, z) bounds of the voxel volume in metres (official [0, -25.6, -2] /
    [51.2, 25.6, 4.4]).
    """

    def __init__(self, voxel_channels: int, image_channels: int, num_classes: int, scene_lo: Sequence[float],
                 scene_hi: Sequence[float], swap_voxel_axes: bool = False):
        super().__init__()
        c = voxel_channels
        self.swap_voxel_axes = swap_voxel_axes
        self.img_feat_reduce = nn.Linear(image_channels, c)
        self.point_soft_weights = nn.Sequential(nn.Linear(c, c // 2), nn.ReLU(), nn.Linear(c // 2, 2))
        self.point_occ_mlp = _Mlp(c, c, num_classes)
        self.register_buffer("scene_lo", torch.tensor(list(scene_lo), dtype=torch.float32), persistent=False)
        self.register_buffer("scene_hi", torch.tensor(list(scene_hi), dtype=torch.float32), persistent=False)

    def sample_voxels(self, voxel_feats: Tensor, points: Tensor) -> Tensor:
        """voxel_feats (B, C, X, Y, Z), points (B, N, 3) in metres -> (B, N, C)."""
        b, n = points.shape[:2]
        norm = (points - self.scene_lo) / (self.scene_hi - self.scene_lo) * 2.0 - 1.0  # (B, N, 3), x y z
        grid = norm if self.swap_voxel_axes else norm.flip(-1)  # grid_sample order: (Z, Y, X) = (last .. first)
        out = F.grid_sample(voxel_feats, grid.view(b, 1, 1, n, 3).to(voxel_feats.dtype), mode="bilinear",
                            align_corners=False)  # (B, C, 1, 1, N)
        return out.flatten(2).transpose(1, 2)

    def sample_image(self, image_feats: Tensor, uv: Tensor, depth: Tensor) -> Tensor:
        """image_feats (B, C_img, h, w), uv (B, N, 2) in [-1, 1] of the network input, depth (B, N) -> (B, N, C)."""
        b, n = uv.shape[:2]
        inside = (depth > 1e-5) & (uv.abs() < 1.0).all(dim=-1)  # (B, N)
        out = F.grid_sample(image_feats, uv.view(b, 1, n, 2).to(image_feats.dtype), mode="bilinear",
                            align_corners=False)  # (B, C_img, 1, N)
        feats = torch.nan_to_num(out.flatten(2).transpose(1, 2)) * inside.unsqueeze(-1).to(out.dtype)
        return self.img_feat_reduce(feats)

    def forward(self, voxel_feats: Tensor, image_feats: Tensor, points: Tensor, uv: Tensor,
                depth: Tensor) -> Tensor:
        """-> logits (B, N, num_classes); see the module docstring."""
        vox = self.sample_voxels(voxel_feats, points)
        img = self.sample_image(image_feats, uv, depth)
        weights = self.point_soft_weights(vox).softmax(dim=-1)  # (B, N, 2)
        return self.point_occ_mlp(vox * weights[..., :1] + img * weights[..., 1:])


def project_points(points: Tensor, velo_to_cam: Tensor, proj: Tensor, post_rot: Tensor, post_tran: Tensor,
                   image_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """LiDAR points -> normalised pixel coordinates of the augmented network input and depth.

    points (B, N, 3); velo_to_cam (B, 4, 4) = Tr; proj (B, 3, 4) = P2 (or P3); post_rot (B, 3, 3), post_tran (B, 3)
    the image augmentation; image_size (H, W). Returns uv (B, N, 2) = 2 * pixel / size - 1 and depth (B, N) =
    third row of P @ Tr @ p (official ``CreateDepthFromLiDAR``).
    """
    h, w = image_size
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # (B, N, 4)
    cam = homo @ velo_to_cam.transpose(1, 2)  # (B, N, 4)
    pix = cam @ proj.transpose(1, 2)  # (B, N, 3)
    depth = pix[..., 2]
    uv = pix[..., :2] / depth.unsqueeze(-1)
    uv = uv @ post_rot[:, :2, :2].transpose(1, 2) + post_tran[:, None, :2]  # (B, N, 2)
    scale = torch.tensor([w, h], dtype=uv.dtype, device=uv.device)
    return uv / scale * 2.0 - 1.0, depth
