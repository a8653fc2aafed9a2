"""Strided 3D transposed convolution as a set of regular convolutions ("phases"), the CPU fast path.

A transposed conv with stride s writes output o = i*s - p + t for input i and kernel tap t. Output positions with
the same residue r = o mod s (a phase) receive only the taps t = (r + p) mod s + j*s, so each phase is an ordinary
cross-correlation of the input with those taps in reverse order; the phases interleave to the full output. The
phases together do exactly the transposed conv's multiply-adds, but through ``conv3d`` (oneDNN on CPU), which is
several times faster than PyTorch's CPU ``conv_transpose3d``. Each phase uses symmetric conv padding and a crop of
its output, so no padded copy of the input is made. Every step is an ordinary differentiable op.
"""
from __future__ import annotations

import itertools
from typing import Callable, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class AxisPhase(NamedTuple):
    taps: tuple[int, ...]  # kernel taps of the transposed weight, in correlation order
    padding: int  # symmetric padding of the regular conv
    crop: int  # first output of the regular conv that belongs to the phase
    size: int  # outputs of the phase along the axis


class Phase(NamedTuple):
    residue: tuple[int, int, int]  # output position mod stride, per axis
    axes: tuple[AxisPhase, AxisPhase, AxisPhase]


def axis_phases(n_in: int, kernel: int, stride: int, padding: int, output_padding: int
                ) -> tuple[int, list[AxisPhase]]:
    """Phases of one axis of a transposed conv (dilation 1) -> (output length, one AxisPhase per residue)."""
    n_out = (n_in - 1) * stride - 2 * padding + kernel + output_padding
    phases = []
    for r in range(stride):
        taps = tuple(range((r + padding) % stride, kernel, stride))
        if not taps:
            raise ValueError(f"kernel {kernel} < stride {stride}: phase {r} has no taps")
        size = len(range(r, n_out, stride))
        lo = (r + padding) // stride - (len(taps) - 1)  # input index read by the first tap for output m = 0
        pad = max(0, -lo, size - 1 + lo + len(taps) - n_in)
        phases.append(AxisPhase(taps[::-1], pad, lo + pad, size))
    return n_out, phases


def conv_transpose3d_phases(in_shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                            padding: Sequence[int], output_padding: Sequence[int]
                            ) -> tuple[tuple[int, int, int], list[Phase]]:
    """All prod(stride) phases of a 3D transposed conv over a spatial input shape -> (output shape, phases)."""
    per_axis = [axis_phases(n, k, s, p, op) for n, k, s, p, op in zip(in_shape, kernel, stride, padding,
                                                                     output_padding)]
    out_shape = (per_axis[0][0], per_axis[1][0], per_axis[2][0])
    phases = [Phase(res, (per_axis[0][1][res[0]], per_axis[1][1][res[1]], per_axis[2][1][res[2]]))
              for res in itertools.product(*[range(s) for s in stride])]
    return out_shape, phases


def phase_weight(weight: Tensor, phase: Phase) -> Tensor:
    """Transposed-conv weight (Cin, Cout, kx, ky, kz) -> the phase's conv3d weight (Cout, Cin, jx, jy, jz)."""
    w = weight
    for dim, axis in enumerate(phase.axes, start=2):
        w = w.index_select(dim, torch.tensor(axis.taps, device=weight.device))
    return w.transpose(0, 1)


def phase_conv3d(x: Tensor, weight: Tensor, bias: Optional[Tensor], phase: Phase,
                 epilogue: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """One phase's output (B, C', mx, my, mz) from x (B, Cin, X, Y, Z) and the phase weight: conv3d, then the
    per-voxel ``epilogue`` (e.g. activation + 1x1 classifier; it may change the channels), then the crop (a view)."""
    out = F.conv3d(x, weight, bias, padding=tuple(a.padding for a in phase.axes))
    if epilogue is not None:
        out = epilogue(out)
    (cx, mx), (cy, my), (cz, mz) = ((a.crop, a.size) for a in phase.axes)
    return out[:, :, cx:cx + mx, cy:cy + my, cz:cz + mz]


def conv_transpose3d_phased(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                            stride: Sequence[int] = (1, 1, 1), padding: Sequence[int] = (0, 0, 0),
                            output_padding: Sequence[int] = (0, 0, 0),
                            epilogue: Optional[Callable[[Tensor], Tensor]] = None,
                            memory_format: Optional[torch.memory_format] = None) -> Tensor:
    """``epilogue(F.conv_transpose3d(x, weight, bias, stride, padding, output_padding))`` (groups 1, dilation 1)
    computed phase by phase, so only the epilogue's output is stored at full resolution. ``epilogue`` must act per
    voxel. The output has ``memory_format``, by default x's (channels_last_3d in, channels_last_3d out)."""
    out_shape, phases = conv_transpose3d_phases(x.shape[2:], weight.shape[2:], stride, padding, output_padding)
    if memory_format is None:
        memory_format = torch.channels_last_3d \
            if x.is_contiguous(memory_format=torch.channels_last_3d) and x.shape[1] > 1 else torch.contiguous_format
    out: Optional[Tensor] = None
    sx, sy, sz = stride
    for phase in phases:
        rx, ry, rz = phase.residue
        y = phase_conv3d(x, phase_weight(weight, phase), bias, phase, epilogue)
        if out is None:
            out = torch.empty(x.shape[0], y.shape[1], *out_shape, dtype=y.dtype, device=y.device,
                              memory_format=memory_format)
        out[:, :, rx::sx, ry::sy, rz::sz] = y
    assert out is not None
    return out


__all__ = ["AxisPhase", "Phase", "axis_phases", "conv_transpose3d_phases", "conv_transpose3d_phased",
           "phase_conv3d", "phase_weight"]
