"""VLScene occupancy head (spec §2.7): occ conv → SGN's SDB (MPAC ×2 + 3-D ASPP) → Header (×2 up, LN + Linear).

Layout (B, C, X, Y, Z) throughout. Attribute names equal the official sub-keys (``occ_convs``, ``sdb``,
``ssc_header``), so the official ``pts_bbox_head.{occ_convs,sdb,ssc_header}.*`` keys load after stripping the
``pts_bbox_head.`` prefix. The train-only point head is not part of this module.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MPAC(nn.Module):
    """Anisotropic multi-kernel conv (AIC-Net / SGN MPAC).

    A bias-free 1×1×1 conv gives 3·n gates, viewed as (axis, kernel) and softmaxed over the kernels; gate row 0
    weights the convs along dim X (``conv_kx1x1``), row 1 along Y, row 2 along Z. The axes run in sequence Z → Y → X,
    each as the gate-weighted sum of ReLU(1-D conv_k); then ReLU(y + x) (residual) or ReLU(y).
    """

    def __init__(self, channels: int, kernels: Sequence[int] = (3, 5, 7), residual: bool = True):
        super().__init__()
        c, self.n, self.residual = channels, len(kernels), residual
        self.conv_mx = nn.Conv3d(c, 3 * self.n, 1, bias=False)
        self.conv_1x1xk = nn.ModuleList(nn.Conv3d(c, c, (1, 1, k), padding=(0, 0, k // 2)) for k in kernels)
        self.conv_1xkx1 = nn.ModuleList(nn.Conv3d(c, c, (1, k, 1), padding=(0, k // 2, 0)) for k in kernels)
        self.conv_kx1x1 = nn.ModuleList(nn.Conv3d(c, c, (k, 1, 1), padding=(k // 2, 0, 0)) for k in kernels)

    @staticmethod
    def _axis(x: Tensor, convs: nn.ModuleList, gates: Tensor) -> Tensor:
        """sum_k gates[:, k] * ReLU(conv_k(x)); gates (B, n, X, Y, Z)."""
        return sum(gates[:, k:k + 1] * torch.relu(conv(x)) for k, conv in enumerate(convs))

    def forward(self, x: Tensor) -> Tensor:
        b, _, *grid = x.shape
        gates = self.conv_mx(x).view(b, 3, self.n, *grid).softmax(dim=2)  # (B, axis, kernel, X, Y, Z)
        y = self._axis(x, self.conv_1x1xk, gates[:, 2])
        y = self._axis(y, self.conv_1xkx1, gates[:, 1])
        y = self._axis(y, self.conv_kx1x1, gates[:, 0])
        return torch.relu(y + x) if self.residual else torch.relu(y)


class ASPP3D(nn.Module):
    """1×1×1 reduce to C/2 → three 3³ convs with dilation 1/2/4 → concat → 1×1×1 fuse to C → ReLU (no residual)."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.reduce = nn.Conv3d(channels, c, 1)
        self.aspp_1 = nn.Conv3d(c, c, 3, padding=1, dilation=1)
        self.aspp_2 = nn.Conv3d(c, c, 3, padding=2, dilation=2)
        self.aspp_4 = nn.Conv3d(c, c, 3, padding=4, dilation=4)
        self.fusion = nn.Conv3d(3 * c, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        r = self.reduce(x)
        return torch.relu(self.fusion(torch.cat([self.aspp_1(r), self.aspp_2(r), self.aspp_4(r)], dim=1)))


class SDB(nn.Module):
    """SGN's Semantic Diffusion Block: 3³ conv (with bias, no activation) → ``depth`` residual MPACs → ASPP."""

    def __init__(self, in_channels: int, channels: int, depth: int = 2):
        super().__init__()
        self.conv_in = nn.Conv3d(in_channels, channels, 3, padding=1)
        self.diffusion = nn.Sequential(*(MPAC(channels, residual=True) for _ in range(depth)))
        self.aspp = ASPP3D(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.aspp(self.diffusion(self.conv_in(x)))


class SSCHeader(nn.Module):
    """Trilinear ×2 upsampling (align_corners=True), then per-voxel LayerNorm + Linear to class logits."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.mlp_head = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        up = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
        return self.mlp_head(up.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)  # (B, K, 2X, 2Y, 2Z)


class OccHead(nn.Module):
    """(B, in_channels, X, Y, Z) → logits (B, num_classes, 2X, 2Y, 2Z).

    occ conv = 3³ conv (no bias) + GroupNorm(``num_groups``) + ReLU to ``mid_channels`` (official 256 → 128, GN32);
    SDB to ``mid_channels // 2`` with ``sdb_depth`` MPACs (official 2); Header with ``num_classes`` (official 20).
    """

    def __init__(self, in_channels: int = 256, num_classes: int = 20, mid_channels: int = 128, num_groups: int = 32,
                 sdb_depth: int = 2):
        super().__init__()
        self.occ_convs = nn.ModuleList([nn.Sequential(
            nn.Conv3d(in_channels, mid_channels, 3, padding=1, bias=False),
            nn.GroupNorm(num_groups, mid_channels),
            nn.ReLU(),
        )])
        self.sdb = SDB(mid_channels, mid_channels // 2, depth=sdb_depth)
        self.ssc_header = SSCHeader(num_classes, mid_channels // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.ssc_header(self.sdb(self.occ_convs[0](x)))
