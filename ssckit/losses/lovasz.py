"""Lovász-softmax loss (Berman et al., CVPR 2018), pure PyTorch, all classes at once (one sort of an (M, C) array)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def lovasz_softmax(logits: Tensor, target: Tensor, ignore_index: Optional[int] = 255,
                   classes: str = "present") -> Tensor:
    """Lovász extension of the Jaccard loss on softmax probabilities, pooled over the whole batch.

    Args:
        logits: (N, C) or (B, C, *spatial) raw scores; the softmax is taken here, in fp32.
        target: (N,) or (B, *spatial) class ids; ``ignore_index`` entries are dropped (None keeps all).
        classes: "present" averages over classes that occur in the kept labels (the reference default; 0 if
            none), "all" over every class.
    Per class c with errors e = |[y == c] - p_c| sorted in decreasing order, the loss is <e_sorted, g> where g is
    the discrete derivative of 1 - IoU along the sorted order (the reference ``lovasz_grad``).
    """
    if classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    num_classes = logits.shape[1]
    if logits.dim() == 2:
        flat_logits, labels = logits, target.reshape(-1).long()
    else:
        flat_logits = logits.movedim(1, -1).reshape(-1, num_classes)  # (N, C)
        labels = target.reshape(-1).long()
    if flat_logits.shape[0] != labels.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    if ignore_index is not None:
        keep = labels != ignore_index
        flat_logits, labels = flat_logits[keep], labels[keep]
    with torch.autocast(device_type=logits.device.type, enabled=False):
        probs = flat_logits.float().softmax(dim=-1)  # (M, C)
        fg = (labels[:, None] == torch.arange(num_classes, device=labels.device)).float()  # (M, C)
        errors = (fg - probs).abs()
        errors_sorted, order = errors.sort(dim=0, descending=True)  # per class column
        fg_sorted = fg.gather(0, order)
        positives = fg_sorted.sum(0)  # (C,)
        intersection = positives - fg_sorted.cumsum(0)
        union = positives + (1.0 - fg_sorted).cumsum(0)  # >= 1 everywhere
        jaccard = 1.0 - intersection / union  # (M, C)
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
        per_class = (errors_sorted * grad).sum(0)  # (C,)
    counted = positives > 0 if classes == "present" else torch.ones_like(positives, dtype=torch.bool)
    return torch.where(counted, per_class, per_class.new_zeros(())).sum() / counted.sum().clamp_min(1).float()
