"""Losses shared by the ssckit models. ``LOSSES`` is the registry of voxel losses usable by name from configs.

Every voxel loss takes ``(logits (B, C, *spatial), target (B, *spatial))`` plus, for some, the extras listed in
``LOSS_EXTRAS``; :func:`ssc_losses` computes a named, weighted set of them for one output, so a model with deep
supervision calls it once per output (Symphonies: weights 0.5 / 0.5 / 1.0).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from torch import Tensor

from ssckit.errors import SsckitError
from ssckit.losses.depth import depth_bce, depth_bin_targets, depth_patch_min
from ssckit.losses.distill import kd_feat_loss, kd_logits_loss
from ssckit.losses.lovasz import lovasz_softmax
from ssckit.losses.ssc import IGNORE_INDEX, bce_to_one, ce_ssc, frustum_proportion, geo_scal, sem_scal

LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce_ssc": ce_ssc,
    "sem_scal": sem_scal,
    "geo_scal": geo_scal,
    "frustum": frustum_proportion,
    "lovasz": lovasz_softmax,
}

# Keyword arguments each registered loss needs beyond (logits, target).
LOSS_EXTRAS: dict[str, tuple[str, ...]] = {
    "ce_ssc": ("class_weights",),
    "frustum": ("tile_ids", "num_tiles"),
}


def ssc_losses(logits: Tensor, target: Tensor, names: Sequence[str], weights: Optional[Sequence[float]] = None,
               class_weights: Optional[Tensor] = None, tile_ids: Optional[Tensor] = None,
               num_tiles: int = 0) -> dict[str, Tensor]:
    """Each named loss (unweighted) plus ``total`` = sum of weight * loss (weights default to 1).

    Args:
        names: keys of :data:`LOSSES`, e.g. ``("ce_ssc", "sem_scal", "geo_scal", "frustum")``.
        class_weights: (C,) CE weights for ``ce_ssc`` (None = unweighted).
        tile_ids, num_tiles: per-voxel image-tile ids (-1 = none) for ``frustum``.
    """
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        raise SsckitError(f"unknown loss name(s) {unknown}; valid names: {sorted(LOSSES)}")
    if len(set(names)) != len(names):
        raise SsckitError(f"duplicate loss names in {list(names)}")
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names):
        raise SsckitError(f"{len(names)} loss names but {len(weights)} weights")
    if "frustum" in names and (tile_ids is None or num_tiles <= 0):
        raise SsckitError("the 'frustum' loss needs tile_ids and a positive num_tiles")
    extras = {"class_weights": class_weights, "tile_ids": tile_ids, "num_tiles": num_tiles}
    out: dict[str, Tensor] = {}
    total: Optional[Tensor] = None
    for name, weight in zip(names, weights):
        value = LOSSES[name](logits, target, **{key: extras[key] for key in LOSS_EXTRAS.get(name, ())})
        out[name] = value
        total = value * weight if total is None else total + value * weight
    out["total"] = total if total is not None else logits.float().sum() * 0.0
    return out


__all__ = [
    "IGNORE_INDEX", "LOSSES", "LOSS_EXTRAS", "bce_to_one", "ce_ssc", "depth_bce", "depth_bin_targets",
    "depth_patch_min", "frustum_proportion", "geo_scal", "kd_feat_loss", "kd_logits_loss", "lovasz_softmax",
    "sem_scal", "ssc_losses",
]
