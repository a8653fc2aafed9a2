"""Trivial SSC baselines that any learned model must beat."""
from __future__ import annotations

from typing import Iterable

import numpy as np

IGNORE = 255


def majority_baseline(targets: Iterable[np.ndarray], fill: int = 0) -> np.ndarray:
    """Per-voxel majority class over training targets.

    Args:
        targets: learning-id grids (X, Y, Z) (uint8, 255 = ignore), all of one shape; consumed once (a generator is
            fine: one grid is held at a time, plus one uint16 count grid per class seen, uint32 past 65,535 grids).
        fill: class of voxels that are ignored (255) in every target.

    Returns:
        uint8 (X, Y, Z): the most frequent non-255 class per voxel; ties go to the smallest class id.
    """
    counts: dict[int, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    dtype: type = np.uint16
    for n, t in enumerate(targets):
        if n == np.iinfo(np.uint16).max:  # counts could overflow from here on
            dtype = np.uint32
            counts = {c: a.astype(dtype) for c, a in counts.items()}
        t = np.asarray(t)
        if shape is None:
            shape = t.shape
        elif t.shape != shape:
            raise ValueError(f"targets differ in shape: {shape} vs {t.shape}")
        present = np.flatnonzero(np.bincount(t.reshape(-1).astype(np.int64), minlength=256))
        for c in present[present != IGNORE]:  # per class present (<= a few dozen), not per voxel
            if c not in counts:
                counts[c] = np.zeros(shape, dtype=dtype)
            counts[c] += t == c
    if shape is None:
        raise ValueError("majority_baseline needs at least one target")
    best = np.full(shape, fill, dtype=np.uint8)
    best_count = np.zeros(shape, dtype=np.uint32)
    for c in sorted(counts):  # ascending ids + strict '>' -> ties keep the smaller id
        better = counts[c] > best_count
        best[better] = c
        best_count[better] = counts[c][better]
    return best
