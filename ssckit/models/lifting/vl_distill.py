"""Student side of VLScene's vision-language guidance distillation (training only; spec 2.4).

Given the 128-ch context feature F (the lifted "img_feat"), the frozen teacher's pixel features ``vl_feat``
(B, 512, H, W) and its 21-class logits ``seg_logits`` at the same resolution:

    E = conv1x1(relu(conv1x1(cat[F, vl_feat, softmax(seg_logits)])))       (C + 512 + 21 -> 256 -> C)
    T = g(E') * E' + g(F') * F',  E' = adapter_sem(E), F' = adapter_img(F),  g = sigmoid(conv1x1(avgpool(.)))
    seg_head_logits = head(F)                                                (2 BasicBlocks + 1x1 -> 21)

The losses live in ``ssckit.losses``: ``kd_feat = mean |F - T|`` and ``kd_logits = CE(seg_head_logits,
argmax seg_logits)`` (no class weights, no ignore index). As shipped, T is *not* detached: F and the fusion layers
both get gradients from ``kd_feat``. ``detach_teacher=True`` returns ``T.detach()`` (a plain stop-gradient on the
target; the fusion layers then get no gradient at all, so this is an ablation switch only).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ssckit.models.lifting.depth_net import BasicBlock, apply_key_rules


class ClipFusion(nn.Module):
    """Gated merge of the VL-enhanced feature E and the image feature F (official ``ClipFusion``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.adapter_sem = nn.Conv2d(channels, channels, 1)
        self.adapter_img = nn.Conv2d(channels, channels, 1)
        self.gate_sem = nn.Conv2d(channels, channels, 1)
        self.gate_img = nn.Conv2d(channels, channels, 1)

    def forward(self, img_feat: Tensor, sem_feat: Tensor) -> Tensor:
        """img_feat F, sem_feat E (B, C, H, W) -> T (B, C, H, W)."""
        sem = self.adapter_sem(sem_feat)
        img = self.adapter_img(img_feat)
        gate_sem = self.gate_sem(sem.mean(dim=(2, 3), keepdim=True)).sigmoid()  # (B, C, 1, 1)
        gate_img = self.gate_img(img.mean(dim=(2, 3), keepdim=True)).sigmoid()
        return sem * gate_sem + img * gate_img


class VLDistillOutput(NamedTuple):
    enhanced: Tensor  # E (B, C, H, W)
    target: Tensor  # T (B, C, H, W), the L1 target for F
    seg_logits: Tensor  # student 2D seg logits (B, num_classes, H, W)


class VLDistillStudent(nn.Module):
    """Fusion MLP + ClipFusion + 2D seg head on the context feature F."""

    def __init__(self, channels: int = 128, vl_channels: int = 512, num_classes: int = 21, hidden: int = 256,
                 detach_teacher: bool = False):
        super().__init__()
        self.detach_teacher = detach_teacher
        self.fusion = nn.Sequential(nn.Conv2d(channels + vl_channels + num_classes, hidden, 1), nn.ReLU(),
                                    nn.Conv2d(hidden, channels, 1))
        self.clip_fusion = ClipFusion(channels)
        self.seg_head = nn.Sequential(BasicBlock(channels), BasicBlock(channels),
                                      nn.Conv2d(channels, num_classes, 1))

    def forward(self, img_feat: Tensor, vl_feat: Tensor, vl_logits: Tensor) -> VLDistillOutput:
        """img_feat F (B, C, H, W), vl_feat (B, 512, H, W), vl_logits (B, K, H, W) -> (E, T, seg logits)."""
        enhanced = self.fusion(torch.cat([img_feat, vl_feat, vl_logits.softmax(dim=1)], dim=1))
        target = self.clip_fusion(img_feat, enhanced)
        if self.detach_teacher:
            target = target.detach()
        return VLDistillOutput(enhanced, target, self.seg_head(img_feat))


_VL_RULES: tuple[tuple[str, str], ...] = (
    (r"clip_fusion\.([02])\.(weight|bias)", r"fusion.\1.\2"),
    (r"img_clip_fusion\.adapter_(sem|img)\.(weight|bias)", r"clip_fusion.adapter_\1.\2"),
    (r"img_clip_fusion\.attention_(sem|img)\.1\.(weight|bias)", r"clip_fusion.gate_\1.\2"),
    (r"img_seg_head\.([01])\.(.+)", r"seg_head.\1.\2"),
    (r"img_seg_head\.2\.(weight|bias)", r"seg_head.2.\1"),
)


def official_vl_distill_key(key: str) -> str:
    """Official ``clip_fusion.*`` / ``img_clip_fusion.*`` / ``img_seg_head.*`` key (relative to
    ``img_view_transformer.``) -> :class:`VLDistillStudent` key."""
    return apply_key_rules(key, _VL_RULES, "VL distillation")
