"""mmdet-style FPN (VLScene's image neck): lateral 1x1 convs, top-down nearest upsampling to the exact size,
3x3 output convs, extra stride-2 convs on the last output.

Official config: ``in_channels=[80, 160, 320, 640], out_channels=128, start_level=1, add_extra_convs='on_output',
num_outs=4, relu_before_extra_convs=True`` -> four 128-ch maps at strides 8/16/32/64 (only the stride-8 one is used
downstream). As in mmdet, a ReLU precedes only the *second and later* extra convs, so with one extra conv it is
never applied. Parameter names match mmdet (``lateral_convs.N.conv``, ``fpn_convs.N.conv``): official keys map
unchanged (:func:`official_fpn_key`).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class _ConvModule(nn.Module):
    """mmcv ``ConvModule`` without norm/activation: only the ``conv`` child (with bias)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        nn.init.xavier_uniform_(self.conv.weight)  # mmdet FPN init_cfg: Xavier (uniform), bias 0
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """Feature pyramid over ``in_channels[start_level:]`` plus ``num_outs - (L - start_level)`` extra levels."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 relu_before_extra_convs: bool = False):
        super().__init__()
        self.start_level = start_level
        self.num_inputs = len(in_channels)
        used = list(in_channels[start_level:])
        if num_outs < len(used):
            raise ValueError(f"num_outs={num_outs} < {len(used)} used input levels")
        self.relu_before_extra_convs = relu_before_extra_convs
        self.lateral_convs = nn.ModuleList([_ConvModule(c, out_channels, 1) for c in used])
        self.fpn_convs = nn.ModuleList([_ConvModule(out_channels, out_channels, 3) for _ in used])
        # extra levels on the last output ('on_output'): 3x3 stride-2 convs
        self.fpn_convs.extend(_ConvModule(out_channels, out_channels, 3, stride=2)
                              for _ in range(num_outs - len(used)))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """feats: one (B, C_i, H_i, W_i) per entry of ``in_channels`` -> ``num_outs`` maps (B, out, H_k, W_k)."""
        if len(feats) != self.num_inputs:
            raise ValueError(f"FPN expects {self.num_inputs} inputs, got {len(feats)}")
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[self.start_level:])]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        n_used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(n_used)]
        for i in range(n_used, len(self.fpn_convs)):
            src = outs[-1]
            if i > n_used and self.relu_before_extra_convs:
                src = F.relu(src)
            outs.append(self.fpn_convs[i](src))
        return outs


def official_fpn_key(key: str) -> str:
    """Official ``img_neck.*`` key (prefix removed) -> :class:`FPN` key (identical names)."""
    if not (key.startswith("lateral_convs.") or key.startswith("fpn_convs.")):
        raise KeyError(f"no ssckit mapping for official FPN key {key!r}")
    return key
