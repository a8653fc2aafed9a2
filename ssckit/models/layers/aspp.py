"""3D atrous spatial pyramid block used after the last Symphonies layer."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class ASPP3D(nn.Module):
    """``ReLU(x + sum_d [conv3(d) -> norm -> ReLU -> conv3(d) -> norm](x))``; bias-free convs (official ``ASPP``)."""

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 3),
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm3d):
        super().__init__()
        self.blks = nn.ModuleList([
            nn.Sequential(
                nn.Conv3d(channels, channels, kernel_size=3, padding=d, dilation=d, bias=False),
                norm_layer(channels),
                nn.ReLU(inplace=True),
                nn.Conv3d(channels, channels, kernel_size=3, padding=d, dilation=d, bias=False),
                norm_layer(channels),
            ) for d in dilations
        ])

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, X, Y, Z) -> same shape."""
        out = x
        for blk in self.blks:
            out = out + blk(x)
        return F.relu(out)
