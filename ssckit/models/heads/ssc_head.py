"""Semantic scene completion head: 3D transposed-conv upsampling to the label grid, then a 1x1x1 classifier."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn


def _up_block(channels: int, stride: tuple[int, int, int], norm_layer: Callable[[int], nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose3d(channels, channels, kernel_size=3, stride=stride, padding=1,
                           output_padding=tuple(s - 1 for s in stride)),
        norm_layer(channels),
        nn.ReLU(),
    )


class SSCHead(nn.Module):
    """(B, C, X, Y, Z) -> (B, num_classes, X*s, Y*s, Z*z_upsample*s) with s = 2 if ``xyz_upsample`` else 1.

    Official Symphonies ``cls_head``: ConvT3d k3 stride (1, 1, z) + BN + ReLU (``z_up``), ConvT3d k3 stride 2 + BN
    + ReLU (``xyz_up``), Conv3d 1x1x1 (``classifier``). Either upsampling stage is omitted when not needed.
    """

    def __init__(self, channels: int, num_classes: int, z_upsample: int = 2, xyz_upsample: bool = True,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm3d):
        super().__init__()
        self.z_up = _up_block(channels, (1, 1, z_upsample), norm_layer) if z_upsample > 1 else None
        self.xyz_up = _up_block(channels, (2, 2, 2), norm_layer) if xyz_upsample else None
        self.classifier = nn.Conv3d(channels, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.z_up is not None:
            x = self.z_up(x)
        if self.xyz_up is not None:
            x = self.xyz_up(x)
        return self.classifier(x)
