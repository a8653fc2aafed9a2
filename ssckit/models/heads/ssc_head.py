"""Semantic scene completion head: 3D transposed-conv upsampling to the label grid, then a 1x1x1 classifier.

Two paths, chosen automatically per call (:meth:`SSCHead.path`):
- ``"reference"``: the modules as built (training, or norms that cannot be folded);
- ``"phased"`` (eval on CPU, BatchNorm3d with running statistics): each BatchNorm is folded into its transposed
  conv, every transposed conv runs as stride-phase regular convolutions (:mod:`ssckit.ops.conv_transpose`), and the
  last upsampling is fused with ReLU and the classifier phase by phase, so the full-resolution 128-channel volume
  (1 GB at 256 x 256 x 32) is never stored, only the class logits. Same result up to float rounding.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.models.layers.bn_fold import fold_batchnorm, foldable_batchnorm
from ssckit.ops.conv_transpose import conv_transpose3d_phased


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

    def path(self, x: Tensor) -> str:
        """The implementation :meth:`forward` uses for ``x``: ``"phased"`` or ``"reference"``."""
        blocks = [b for b in (self.z_up, self.xyz_up) if b is not None]
        if self.training or x.device.type != "cpu" or not blocks:
            return "reference"
        ok = all(isinstance(b[0], nn.ConvTranspose3d) and foldable_batchnorm(b[1]) and isinstance(b[2], nn.ReLU)
                 for b in blocks)
        return "phased" if ok else "reference"

    def forward(self, x: Tensor) -> Tensor:
        if self.path(x) == "phased":
            return self.forward_phased(x)
        if self.z_up is not None:
            x = self.z_up(x)
        if self.xyz_up is not None:
            x = self.xyz_up(x)
        return self.classifier(x)

    @staticmethod
    def _up_phased(x: Tensor, block: nn.Sequential, epilogue: Callable[[Tensor], Tensor],
                   memory_format: Optional[torch.memory_format] = None) -> Tensor:
        conv: nn.ConvTranspose3d = block[0]
        weight, bias = fold_batchnorm(conv.weight, conv.bias, block[1], out_dim=1)
        return conv_transpose3d_phased(x, weight, bias, conv.stride, conv.padding, conv.output_padding,
                                       epilogue=epilogue, memory_format=memory_format)

    def forward_phased(self, x: Tensor) -> Tensor:
        """The ``"phased"`` path (BatchNorms in eval mode); see the module docstring."""
        def relu(t: Tensor) -> Tensor:
            return F.relu(t, inplace=True)

        def relu_classify(t: Tensor) -> Tensor:  # per phase: only num_classes channels are kept
            return self.classifier(F.relu(t, inplace=True))

        x = x.contiguous(memory_format=torch.channels_last_3d)  # oneDNN's fast layout; a no-op for token volumes
        if self.z_up is not None:
            last = self.xyz_up is None
            x = self._up_phased(x, self.z_up, relu_classify if last else relu,
                                torch.contiguous_format if last else None)
            if last:
                return x
        return self._up_phased(x, self.xyz_up, relu_classify, torch.contiguous_format)
