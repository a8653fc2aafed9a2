"""3D atrous spatial pyramid block used after the last Symphonies layer."""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.models.layers.bn_fold import fold_batchnorm, foldable_batchnorm


class ASPP3D(nn.Module):
    """``ReLU(x + sum_d [conv3(d) -> norm -> ReLU -> conv3(d) -> norm](x))``; bias-free convs (official ``ASPP``).

    In eval mode with BatchNorms (running statistics) the norms are folded into the convs (:meth:`path`
    ``"folded"``); same result up to float rounding, half the memory passes. Otherwise the modules run as built.
    """

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

    def path(self) -> str:
        """``"folded"`` (eval-mode BatchNorms folded into the convs) or ``"reference"``."""
        ok = not self.training and all(foldable_batchnorm(b[1]) and foldable_batchnorm(b[4]) for b in self.blks)
        return "folded" if ok else "reference"

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, X, Y, Z) -> same shape (and memory format: channels_last_3d stays channels_last_3d)."""
        folded = self.path() == "folded"
        out = x
        for blk in self.blks:
            if folded:
                out = out + self._folded_branch(x, blk)
            else:
                out = out + blk(x)
        return F.relu(out)

    @staticmethod
    def _folded_branch(x: Tensor, blk: nn.Sequential) -> Tensor:
        conv1, conv2 = blk[0], blk[3]
        w1, b1 = fold_batchnorm(conv1.weight, conv1.bias, blk[1])
        w2, b2 = fold_batchnorm(conv2.weight, conv2.bias, blk[4])
        h = F.relu(F.conv3d(x, w1, b1, padding=conv1.padding, dilation=conv1.dilation), inplace=True)
        return F.conv3d(h, w2, b2, padding=conv2.padding, dilation=conv2.dilation)
