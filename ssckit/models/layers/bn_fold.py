"""Folding an eval-mode BatchNorm into the preceding convolution (the inference fast paths of the 3D blocks)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


def foldable_batchnorm(norm: nn.Module) -> bool:
    """True for a BatchNorm in eval mode that normalizes with its running statistics."""
    return (isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training
            and norm.running_mean is not None and norm.running_var is not None)


def fold_batchnorm(weight: Tensor, bias: Optional[Tensor], norm: nn.modules.batchnorm._BatchNorm,
                   out_dim: int = 0) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``norm(conv(x))`` as one conv; ``out_dim`` is the weight's output-channel axis (0 for
    ``Conv3d``, 1 for ``ConvTranspose3d``). Differentiable w.r.t. the conv and norm parameters."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shape = [1] * weight.dim()
    shape[out_dim] = -1
    shift = -norm.running_mean * scale if bias is None else (bias - norm.running_mean) * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return weight * scale.view(shape), shift
