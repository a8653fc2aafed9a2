"""Voxel losses of MonoScene / Symphonies / VLScene: weighted CE, the two SCAL losses and the frustum proportion.

All functions are pure, take raw ``logits`` (B, C, *spatial) in any float dtype and a ``target`` (B, *spatial)
of learning ids (long or uint8, 255 = ignore), compute in fp32 with autocast off, and return a 0-d fp32 tensor
that stays attached to the graph even when no voxel contributes (then it is 0, where the official code gives NaN
or raises). Everything is vectorised over voxels, classes and tiles.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255


def _check(logits: Tensor, target: Tensor) -> None:
    if logits.dim() < 2 or logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match as "
                         "(B, C, *spatial) / (B, *spatial)")


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def bce_to_one(x: Tensor) -> Tensor:
    """Elementwise ``F.binary_cross_entropy(x, 1)`` = -max(log x, -100), with PyTorch's value and gradient.

    ``x`` is clamped to [0, 1] first: ratios computed with different summation orders can land one ulp above 1,
    which BCE rejects (a device-side assert on CUDA).
    """
    with _no_autocast(x):
        x = x.float().clamp(0.0, 1.0)
        return F.binary_cross_entropy(x, torch.ones_like(x), reduction="none")


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den with den = 0 replaced by 1 (the caller masks those entries; keeps gradients finite)."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _valid_probs(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax probabilities and labels of the non-ignored voxels of the whole batch: (M, C) fp32, (M,) long."""
    _check(logits, target)
    labels = target.long()
    valid = labels != IGNORE_INDEX  # (B, *spatial)
    with _no_autocast(logits):
        probs = logits.float().movedim(1, -1)[valid].softmax(dim=-1)  # (M, C)
    return probs, labels[valid]


def ce_ssc(logits: Tensor, target: Tensor, class_weights: Optional[Tensor] = None) -> Tensor:
    """Class-weighted cross-entropy, ignore 255, "mean" reduction = sum_i w_{y_i} l_i / sum_i w_{y_i}.

    Same value as ``F.cross_entropy(weight=w, ignore_index=255)``; returns 0 (not NaN) if every voxel is ignored.
    """
    _check(logits, target)
    labels = target.long()
    weight = None if class_weights is None else class_weights.to(device=logits.device, dtype=torch.float32)
    with _no_autocast(logits):
        total = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = labels != IGNORE_INDEX
    denom = valid.sum().float() if weight is None else weight[labels[valid]].sum()
    return total / denom.clamp_min(torch.finfo(torch.float32).tiny)


def sem_scal(logits: Tensor, target: Tensor) -> Tensor:
    """Semantic scene-class affinity loss (MonoScene ``sem_scal_loss``; datasets.md §3.5).

    Over the non-ignored voxels M of the whole batch, for every class c (empty included) present in the GT, with
    p = softmax prob of c and y = [GT == c]: P = sum(py)/sum(p) (only if sum(p) > 0), R = sum(py)/sum(y),
    S = sum((1-p)(1-y))/sum(1-y) (only if sum(1-y) > 0); loss_c = sum of BCE(term, 1). Mean over present classes,
    no class weights. 0 if no class is present (the official code divides by zero).
    """
    probs, labels = _valid_probs(logits, target)  # (M, C), (M,)
    num_classes = probs.shape[1]
    is_c = labels[:, None] == torch.arange(num_classes, device=labels.device)  # (M, C) one-hot mask
    zero = probs.new_zeros(())
    count = is_c.sum(0).float()  # (C,) sum(y)
    negatives = float(labels.numel()) - count  # (C,) sum(1 - y)
    sum_p = probs.sum(0)
    sum_py = torch.where(is_c, probs, zero).sum(0)
    sum_spec = torch.where(is_c, zero, 1.0 - probs).sum(0)
    present = count > 0
    loss_c = (torch.where(present & (sum_p > 0), bce_to_one(_ratio(sum_py, sum_p)), zero)
              + torch.where(present, bce_to_one(_ratio(sum_py, count)), zero)
              + torch.where(present & (negatives > 0), bce_to_one(_ratio(sum_spec, negatives)), zero))
    return loss_c.sum() / present.sum().clamp_min(1).float()


def geo_scal(logits: Tensor, target: Tensor) -> Tensor:
    """Geometric scene-class affinity loss (MonoScene ``geo_scal_loss``; datasets.md §3.5).

    o = 1 - p(empty), y = [GT != 0] over the non-ignored voxels of the whole batch. Loss = BCE(P,1) + BCE(R,1) +
    BCE(S,1) with P = sum(yo)/sum(o), R = sum(yo)/sum(y), S = sum((1-y) p(empty))/sum(1-y) (p(empty) directly, as
    the official code does, not 1 - o). Deviation: a term whose denominator is 0 is dropped (official: NaN).
    """
    probs, labels = _valid_probs(logits, target)
    zero = probs.new_zeros(())
    p_empty = probs[:, 0]
    occupied = 1.0 - p_empty  # o
    y = (labels != 0).float()
    inter = (y * occupied).sum()
    sum_o, sum_y, sum_not_y = occupied.sum(), y.sum(), (1.0 - y).sum()
    spec_num = ((1.0 - y) * p_empty).sum()
    return (torch.where(sum_o > 0, bce_to_one(_ratio(inter, sum_o)), zero)
            + torch.where(sum_y > 0, bce_to_one(_ratio(inter, sum_y)), zero)
            + torch.where(sum_not_y > 0, bce_to_one(_ratio(spec_num, sum_not_y)), zero))


def frustum_proportion(logits: Tensor, target: Tensor, tile_ids: Tensor, num_tiles: int,
                       pool_batch: bool = True) -> Tensor:
    """MonoScene frustum-proportion loss from compact per-voxel tile ids (no dense per-tile masks).

    A frustum is the set of voxels whose centre projects into one image tile (``tile_ids`` (B, *spatial) in
    [0, num_tiles), -1 = in no tile) and whose GT is not 255. Per-tile normalisation of the official MonoScene
    ``step()`` / Symphonies ``frustum_proportion_loss``, reproduced here:
    - with ``pool_batch`` (official), tile k of every sample in the batch is ONE frustum: GT counts and
      probabilities are summed over the batch first (``batch_cnt = frustums_class_dists.sum(0)``);
    - target proportion t = GT class histogram / its total count (classes 0..C-1, empty included);
    - predicted proportion q = per-class sum of softmax probabilities over the frustum's voxels / the sum of that
      over all classes (= the voxel count, since each voxel's softmax sums to 1);
    - KL(t || q) = sum_c t_c (log t_c - log q_c) over the classes with t_c != 0 ("non-zero" is the GT proportion,
      not the class id: empty is included when present), i.e. ``F.kl_div(log q[t>0], t[t>0], "sum")``;
    - loss = mean over frustums with total count > 0 and total probability > 0; 0 if there is none.
    ``pool_batch=False`` treats (sample, tile) pairs as separate frustums instead. As in the official code, a
    class with t_c > 0 but q_c == 0 in fp32 gives +inf.
    """
    _check(logits, target)
    if tile_ids.shape != target.shape:
        raise ValueError(f"tile_ids {tuple(tile_ids.shape)} must have the target's shape {tuple(target.shape)}")
    if num_tiles <= 0:
        raise ValueError(f"num_tiles must be positive, got {num_tiles}")
    batch, num_classes = logits.shape[:2]
    tiles = tile_ids.long().reshape(batch, -1)  # (B, N)
    labels = target.long().reshape(batch, -1)  # (B, N)
    frustums = num_tiles
    if not pool_batch:
        offset = torch.arange(batch, device=tiles.device)[:, None] * num_tiles
        tiles = torch.where(tiles >= 0, tiles + offset, tiles)
        frustums = batch * num_tiles
    keep = (tiles >= 0) & (labels != IGNORE_INDEX)  # (B, N)
    with _no_autocast(logits):
        probs = logits.float().reshape(batch, num_classes, -1).transpose(1, 2)[keep].softmax(dim=-1)  # (M, C)
    tile_k, label_k = tiles[keep], labels[keep]
    pred_mass = probs.new_zeros(frustums, num_classes).index_add_(0, tile_k, probs)  # (T, C)
    gt_count = torch.bincount(tile_k * num_classes + label_k, minlength=frustums * num_classes)
    gt_count = gt_count.reshape(frustums, num_classes).float()  # (T, C)
    total_prob, total_cnt = pred_mass.sum(1), gt_count.sum(1)  # (T,)
    active = (total_prob > 0) & (total_cnt > 0)
    pred_prop = _ratio(pred_mass, total_prob[:, None])
    gt_prop = _ratio(gt_count, total_cnt[:, None])
    pos = (gt_prop > 0) & active[:, None]
    one = torch.ones_like(gt_prop)
    kl = torch.where(pos, gt_prop * (torch.where(pos, gt_prop, one).log() - torch.where(pos, pred_prop, one).log()),
                     torch.zeros_like(gt_prop))  # (T, C)
    return kl.sum() / active.sum().clamp_min(1).float()
