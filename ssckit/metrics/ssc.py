"""Semantic scene completion metric, numerically identical to semantic-kitti-api's ``evaluate_completion.py``.

One global confusion matrix (rows = prediction, cols = ground truth) is accumulated over the whole split; voxels
whose target is ``ignore_index`` or that are marked invalid are left out. Class 0 (empty) stays in the matrix, so a
car predicted on empty ground truth is a false positive of car (datasets.md §2.1).

- per-class IoU_c = TP / (TP + FP + FN + 1e-15) (an empty union scores 0)
- mIoU = mean of IoU over classes 1..N-1, absent classes included (as 0)
- completion: every class > 0 is "occupied"; precision = TPo / (pred occupied + eps32), recall = TPo / (GT occupied
  + eps32), IoU = TPo / (sum(conf) - conf[0, 0]).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

EPS32 = float(np.finfo(np.float32).eps)  # the official precision/recall denominator epsilon
UNION_EPS = 1e-15  # the official per-class IoU denominator epsilon (auxiliary/np_ioueval.py)


def scores_from_confusion(conf: np.ndarray) -> dict[str, np.ndarray | float]:
    """SSC scores from an (N, N) confusion matrix (rows = prediction, cols = GT), as ``evaluate_completion.py``.

    Returns ``iou`` (N,) float64, and floats ``miou``, ``precision``, ``recall``, ``iou_completion``.
    """
    conf = np.asarray(conf, dtype=np.int64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] < 2:
        raise ValueError(f"confusion matrix must be square (N, N) with N >= 2, got shape {conf.shape}")
    tp = np.diag(conf)
    fp = conf.sum(axis=1) - tp
    fn = conf.sum(axis=0) - tp
    iou = tp / (tp + fp + fn + UNION_EPS)  # float64; empty union -> 0 / 1e-15 = 0

    tp_occ = int(conf[1:, 1:].sum())
    pred_occ = int(conf[1:, :].sum())
    gt_occ = int(conf[:, 1:].sum())
    union_occ = int(conf.sum() - conf[0, 0])
    return {
        "iou": iou,
        "miou": float(iou[1:].mean()),
        "precision": tp_occ / (pred_occ + EPS32),
        "recall": tp_occ / (gt_occ + EPS32),
        # the official script divides without epsilon (NaN on an all-empty split); we report 0 there instead
        "iou_completion": tp_occ / union_occ if union_occ else 0.0,
    }


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255,
                     invalid: np.ndarray | None = None) -> np.ndarray:
    """(N, N) int64 confusion matrix (rows = prediction) of learning-id arrays of equal shape (numpy)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    mask = target != ignore_index
    if invalid is not None:
        mask &= ~np.asarray(invalid, dtype=bool).reshape(target.shape)
    p = pred[mask].astype(np.int64)
    t = target[mask].astype(np.int64)
    _check_range(p, num_classes, "prediction")
    _check_range(t, num_classes, "target")
    counts = np.bincount(p * num_classes + t, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)  # (N_pred, N_gt)


def _check_range(ids: np.ndarray | torch.Tensor, num_classes: int, what: str) -> None:
    if ids.numel() if isinstance(ids, torch.Tensor) else ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{what} holds class id {bad} outside 0..{num_classes - 1} on an evaluated voxel")


class SSCMetric(Metric):
    """torchmetrics SSC metric with the official semantics; its only state is a DDP-summed int64 confusion matrix."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: torch.Tensor

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.int64),
                       dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor, invalid: torch.Tensor | None = None) -> None:
        """Add a batch. ``pred``: learning ids (B, ...) or logits (B, C, ...); ``target``: (B, ...) ids, 255 = ignore;
        ``invalid``: optional bool (B, ...) of voxels to leave out."""
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"logits have {pred.shape[1]} channels, expected {self.num_classes}")
            pred = pred.argmax(dim=1)
        elif pred.is_floating_point():
            raise ValueError("pred of the target's rank must hold integer class ids (or pass logits (B, C, ...))")
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        mask = target != self.ignore_index
        if invalid is not None:
            mask &= ~invalid.to(device=mask.device, dtype=torch.bool).reshape(target.shape)
        p = pred[mask].long()
        t = target[mask].long()
        _check_range(p, self.num_classes, "prediction")
        _check_range(t, self.num_classes, "target")
        n = self.num_classes
        counts = torch.bincount(p * n + t, minlength=n * n)
        self.confmat += counts.reshape(n, n)  # (N_pred, N_gt)

    def compute(self) -> dict[str, torch.Tensor]:
        """``iou`` (N,), ``miou``, ``precision``, ``recall``, ``iou_completion`` as float64 CPU tensors."""
        scores = scores_from_confusion(self.confmat.detach().cpu().numpy())
        return {k: torch.as_tensor(v, dtype=torch.float64) for k, v in scores.items()}


def _as_float(value: float | np.ndarray | torch.Tensor) -> float:
    return float(value.item()) if isinstance(value, (torch.Tensor, np.ndarray)) else float(value)


def scores_to_official_yaml_dict(scores: dict, class_names: Sequence[str]) -> dict[str, float]:
    """The ``scores.txt`` content of the official script (values 0..1; class 0 is not listed) + precision/recall."""
    iou = np.asarray(scores["iou"], dtype=np.float64)
    if len(iou) != len(class_names):
        raise ValueError(f"{len(iou)} IoU values for {len(class_names)} class names")
    out = {"iou_completion": _as_float(scores["iou_completion"]), "iou_mean": _as_float(scores["miou"])}
    out.update({f"iou_{name}": float(v) for name, v in zip(class_names[1:], iou[1:])})
    out["precision"] = _as_float(scores["precision"])
    out["recall"] = _as_float(scores["recall"])
    return out


def format_table(scores: dict, class_names: Sequence[str]) -> str:
    """A plain-text per-class IoU table (percent) followed by mIoU and the completion metrics."""
    iou = np.asarray(scores["iou"], dtype=np.float64)
    if len(iou) != len(class_names):
        raise ValueError(f"{len(iou)} IoU values for {len(class_names)} class names")
    width = max(24, max(len(n) for n in class_names) + 8)
    rule = "-" * (width + 10)
    lines = [f"{'class':<{width}}{'IoU (%)':>10}", rule]
    lines += [f"{i:>2} {name:<{width - 3}}{100 * v:>10.2f}" for i, (name, v) in enumerate(zip(class_names, iou))]
    lines += [rule, f"{f'mIoU (classes 1..{len(class_names) - 1})':<{width}}{100 * _as_float(scores['miou']):>10.2f}"]
    lines += [f"{'completion IoU':<{width}}{100 * _as_float(scores['iou_completion']):>10.2f}",
              f"{'completion precision':<{width}}{100 * _as_float(scores['precision']):>10.2f}",
              f"{'completion recall':<{width}}{100 * _as_float(scores['recall']):>10.2f}"]
    return "\n".join(lines)
