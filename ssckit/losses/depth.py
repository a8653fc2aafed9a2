"""VLScene / BRGScene depth supervision: BCE of the fused depth distribution against binned LiDAR depth.

The official label (OccFormer/BEVDepth ``get_downsampled_gt_depth``) takes the minimum non-zero LiDAR depth per
downsample x downsample patch, then bins it with ``g = (d - (d_min - step/2)) / step``, one-hot over D + 1 columns
and drops column 0, so bin k covers [d_min + step/2 + k*step, d_min + 3step/2 + k*step): one bin (0.5 m) away from
the depth d_min + k*step at which bin k is lifted (vlscene.md §7.3). ssckit defaults to nearest-centre binning,
k = floor(g), i.e. bin k covers [d_min + (k - 1/2) step, d_min + (k + 1/2) step); ``legacy_binning=True`` gives
the official k = floor(g) - 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def depth_patch_min(depth: Tensor, downsample: int) -> Tensor:
    """(B, H, W) depth map in m, 0 = no return -> (B, H/ds, W/ds) min of the positive depths per patch, 0 if none."""
    batch, height, width = depth.shape
    if height % downsample or width % downsample:
        raise ValueError(f"depth map {height}x{width} is not divisible by downsample {downsample}")
    patches = depth.float().reshape(batch, height // downsample, downsample, width // downsample, downsample)
    inf = torch.full((), float("inf"), device=depth.device)
    nearest = torch.where(patches > 0, patches, inf).amin(dim=(2, 4))  # (B, h, w)
    return torch.where(torch.isfinite(nearest), nearest, torch.zeros_like(nearest))


def depth_bin_targets(depth: Tensor, num_bins: int, d_min: float = 2.0, d_step: float = 0.5,
                      legacy_binning: bool = False) -> Tensor:
    """Depth (any shape, m, <= 0 = none) -> bin index (long, same shape), -1 where out of range or missing."""
    g = (depth.float() - (d_min - d_step / 2.0)) / d_step
    index = torch.floor(g).long() - (1 if legacy_binning else 0)
    valid = (depth > 0) & (index >= 0) & (index < num_bins)
    return torch.where(valid, index, torch.full_like(index, -1))


def depth_bce(depth_prob: Tensor, gt_depth: Tensor, downsample: int, d_min: float = 2.0, d_step: float = 0.5,
              legacy_binning: bool = False) -> Tensor:
    """Depth loss of VLScene: sum over foreground pixels and all D bins of BCE(prob, one-hot) / max(1, #fg).

    Args:
        depth_prob: (B, D, h, w) depth probabilities (the fused softmax distribution), any float dtype.
        gt_depth: (B, h*downsample, w*downsample) projected LiDAR depth in m, 0 where no point projects.
        downsample: feature stride (8 in VLScene); the label of a feature pixel is its patch's min depth.
    Pixels without a depth in range contribute nothing. Computed in fp32 with autocast off.
    """
    batch, num_bins, height, width = depth_prob.shape
    if gt_depth.shape != (batch, height * downsample, width * downsample):
        raise ValueError(f"gt_depth {tuple(gt_depth.shape)} does not match depth_prob {tuple(depth_prob.shape)} "
                         f"at downsample {downsample}")
    bins = depth_bin_targets(depth_patch_min(gt_depth, downsample), num_bins, d_min, d_step, legacy_binning)
    fg = bins >= 0  # (B, h, w)
    with torch.autocast(device_type=depth_prob.device.type, enabled=False):
        probs = depth_prob.float().movedim(1, -1)[fg]  # (F, D)
        onehot = F.one_hot(bins[fg], num_bins).float()
        total = F.binary_cross_entropy(probs, onehot, reduction="sum")
    return total / fg.sum().clamp_min(1).float()
