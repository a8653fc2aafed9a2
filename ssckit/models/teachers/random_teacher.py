"""A tiny deterministic teacher for tests and dry runs (no weights to download, same interface as LSeg)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssckit.data.datasets import FrameId
from ssckit.models.teachers.base import NUM_PROMPTS, VL_FEATURE_DIM, Teacher


class RandomTeacher(Teacher):
    """features = tanh(W1 @ avgpool(image)), logits = W2 @ features; W1, W2 drawn from ``seed``.

    The image is average-pooled to ``feature_size`` (adaptive pooling), so each output pixel depends only on its
    own image region; the same seed always gives the same weights.
    """

    def __init__(self, feature_size: tuple[int, int], feature_dim: int = VL_FEATURE_DIM,
                 num_classes: int = NUM_PROMPTS, seed: int = 0) -> None:
        super().__init__(feature_size, feature_dim, num_classes)
        g = torch.Generator().manual_seed(int(seed))
        self.embed = nn.Conv2d(3, feature_dim, 1)
        self.classify = nn.Conv2d(feature_dim, num_classes, 1)
        with torch.no_grad():
            for conv in (self.embed, self.classify):
                fan_in = conv.weight.shape[1]
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / fan_in ** 0.5)
                conv.bias.copy_(0.1 * torch.randn(conv.bias.shape, generator=g))
        self.freeze()

    def _predict(self, left_image: torch.Tensor,
                 frames: Sequence[FrameId] | None) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.adaptive_avg_pool2d(left_image.float(), self.feature_size)  # (B, 3, h, w)
        feats = torch.tanh(self.embed(pooled))
        return feats, self.classify(feats)
