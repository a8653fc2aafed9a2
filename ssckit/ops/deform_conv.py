"""Deformable convolution v1 (mmcv ``DeformConv2dPack`` semantics) in pure PyTorch, with an optional fast path.

Conventions (mmcv / torchvision, identical):
- ``offset`` (B, 2 * deform_groups * kh * kw, Ho, Wo): for deform group g and kernel tap k = ky * kw + kx, channel
  ``2 * (g * kh * kw + k)`` is the row offset dy and the next channel the column offset dx, in input pixels.
- Tap k of output pixel (i, j) reads the input at ``(i * stride - pad + ky * dil + dy, j * stride - pad + kx * dil
  + dx)`` with bilinear interpolation; each of the 4 corners outside the image reads 0.
- Input channels are split into ``deform_groups`` contiguous blocks (one offset field each) and, independently,
  into ``groups`` contiguous blocks for the grouped weight ``(C_out, C_in / groups, kh, kw)``.

The pure path samples all taps with one ``grid_sample`` call per batch (``align_corners=False``: pixel p sits at
``(2p + 1) / size - 1``) and contracts the gathered columns with one einsum. torchvision's ``deform_conv2d`` is used
instead when it works on the tensor's device (probed once per device type against the pure path; its C++ ops do not
load next to a CPU torch). ``SSCKIT_DEFORM_CONV=pure`` forces the pure path.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ENV_BACKEND = "SSCKIT_DEFORM_CONV"
_TORCHVISION_OK: dict[str, bool] = {}


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d_torch(x: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                        stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                        dilation: int | tuple[int, int] = 1) -> Tensor:
    """Reference DCNv1; groups and deform groups are read from the shapes of ``weight`` and ``offset``."""
    b, c_in, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    groups = c_in // c_per_group
    n_taps = kh * kw
    ho, wo = offset.shape[-2:]
    deform_groups = offset.shape[1] // (2 * n_taps)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)

    # sampling positions in input pixels: (B, dg, K, Ho, Wo) each
    off = offset.view(b, deform_groups, n_taps, 2, ho, wo)
    ky, kx = torch.meshgrid(torch.arange(kh, device=x.device), torch.arange(kw, device=x.device), indexing="ij")
    base_y = (torch.arange(ho, device=x.device) * sh - ph).view(1, 1, 1, ho, 1) + (ky.reshape(-1) * dh).view(
        1, 1, n_taps, 1, 1)
    base_x = (torch.arange(wo, device=x.device) * sw - pw).view(1, 1, 1, 1, wo) + (kx.reshape(-1) * dw).view(
        1, 1, n_taps, 1, 1)
    pos_y = off[:, :, :, 0] + base_y.to(x.dtype)
    pos_x = off[:, :, :, 1] + base_x.to(x.dtype)
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1)  # (B, dg, K, Ho, Wo, 2)
    grid = grid.view(b * deform_groups, n_taps * ho, wo, 2)

    cols = F.grid_sample(x.reshape(b * deform_groups, c_in // deform_groups, h, w), grid, mode="bilinear",
                         padding_mode="zeros", align_corners=False)  # (B*dg, C_in/dg, K*Ho, Wo)
    cols = cols.view(b, groups, c_per_group, n_taps, ho * wo)
    wgt = weight.view(groups, c_out // groups, c_per_group, n_taps)
    out = torch.einsum("bgckl,gock->bgol", cols, wgt).reshape(b, c_out, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _torchvision_works(device: torch.device) -> bool:
    """Probe torchvision's ``deform_conv2d`` once per device type: it must run and agree with the pure path."""
    key = device.type
    if key not in _TORCHVISION_OK:
        ok = False
        try:
            from torchvision.ops import deform_conv2d as tv_deform_conv2d
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(1, 4, 5, 6, generator=gen).to(device)
            wgt = torch.randn(6, 2, 3, 3, generator=gen).to(device)
            off = (2 * torch.randn(1, 2 * 2 * 9, 5, 6, generator=gen)).to(device)
            ref = deform_conv2d_torch(x, off, wgt, None, 1, 1, 1)
            got = tv_deform_conv2d(x, off, wgt, None, stride=(1, 1), padding=(1, 1), dilation=(1, 1))
            ok = bool(torch.allclose(got, ref, atol=1e-4, rtol=1e-4))
        except Exception:  # noqa: BLE001 - any failure (missing C++ ops, wrong layout) means "use the pure path"
            ok = False
        _TORCHVISION_OK[key] = ok
    return _TORCHVISION_OK[key]


def deform_conv2d(x: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                  stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                  dilation: int | tuple[int, int] = 1) -> Tensor:
    """DCNv1 dispatch: torchvision's kernel where it works, else :func:`deform_conv2d_torch`."""
    if os.environ.get(ENV_BACKEND, "auto") != "pure" and _torchvision_works(x.device):
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
        return tv_deform_conv2d(x, offset, weight, bias, stride=_pair(stride), padding=_pair(padding),
                                dilation=_pair(dilation))
    return deform_conv2d_torch(x, offset, weight, bias, stride, padding, dilation)


class DeformConv2dPack(nn.Module):
    """mmcv ``DeformConv2dPack``: a DCNv1 whose offsets come from a zero-initialised conv on the same input.

    Parameter names as mmcv: ``weight`` (C_out, C_in / groups, k, k), ``conv_offset`` (C_in -> 2 * dg * k * k,
    same kernel/stride/padding/dilation, with bias), optional ``bias`` (mmcv's default: none).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, deform_groups: int = 1, bias: bool = False):
        super().__init__()
        if in_channels % groups or out_channels % groups or in_channels % deform_groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups {groups} "
                             f"/ deform_groups {deform_groups}")
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * 2 * kernel_size * kernel_size, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation, bias=True)
        stdv = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)  # mmcv reset_parameters
        nn.init.uniform_(self.weight, -stdv, stdv)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> (B, C_out, Ho, Wo)."""
        offset = self.conv_offset(x)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)
