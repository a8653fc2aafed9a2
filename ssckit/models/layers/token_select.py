"""Batched selection of a masked subset of tokens (e.g. FOV or proposal voxels) with padding.

Samples may select different numbers of tokens; the selection is padded to the largest count. Padding slots point
at unselected tokens, and :func:`scatter_selected_tokens` writes their original values back, so padded queries can
run through any per-query operation (MSDA, cross-attention, FFN) without affecting the result.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class TokenSelection(NamedTuple):
    index: Tensor  # (B, M) long: selected token indices first, ascending; then padding
    valid: Tensor  # (B, M) bool: False on padding slots


def select_tokens(mask: Tensor) -> TokenSelection:
    """mask (B, N) bool -> indices of the True entries, padded to the largest count per batch."""
    counts = mask.sum(dim=1)
    m = int(counts.max()) if mask.numel() else 0
    order = torch.sort(mask.to(torch.uint8), dim=1, descending=True, stable=True).indices  # True first
    index = order[:, :m]
    valid = torch.arange(m, device=mask.device)[None, :] < counts[:, None]
    return TokenSelection(index, valid)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """x (B, N, C), index (B, M) -> (B, M, C)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def scatter_selected_tokens(x: Tensor, updates: Tensor, sel: TokenSelection) -> Tensor:
    """Write updates (B, M, C) into x (B, N, C) at the valid selected slots (out of place)."""
    idx = sel.index[..., None].expand(-1, -1, x.shape[-1])
    if not bool(sel.valid.all()):  # padding slots write back the values they hold
        updates = torch.where(sel.valid[..., None], updates, x.gather(1, idx))
    return x.scatter(1, idx, updates)
