"""VLScene vision-language guidance distillation losses (vlscene.md §2.4), computed in fp32."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_feat_loss(student: Tensor, target: Tensor, detach_target: bool = False) -> Tensor:
    """Mean L1 between the context feature F and its VL-enhanced version T (both (B, C, H, W)).

    The official code does not detach T (quirk §7.7, replicated by default); ``detach_target`` is the stop-gradient
    ablation.
    """
    if student.shape != target.shape:
        raise ValueError(f"student {tuple(student.shape)} and target {tuple(target.shape)} differ")
    if detach_target:
        target = target.detach()
    with torch.autocast(device_type=student.device.type, enabled=False):
        return F.l1_loss(student.float(), target.float(), reduction="mean")


def kd_logits_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Plain CE (no class weights, no ignore index) of the 2D head's logits against the teacher's argmax labels.

    Both are (B, K, H, W). If the sizes differ, the student logits are resized (nearest) to the teacher's, as the
    official ``get_seg_loss`` does. Batch 1 works (the official squeeze breaks there, §7.8).
    """
    labels = teacher_logits.argmax(dim=1)  # (B, H, W), first maximum on ties
    if student_logits.shape[-2:] != labels.shape[-2:]:
        student_logits = F.interpolate(student_logits, size=labels.shape[-2:])
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        return F.cross_entropy(student_logits.float(), labels, reduction="mean")
