"""Vision-language teacher interface (VLScene §2.4) and the VLScene left-image pipeline.

A teacher maps the ImageNet-normalised left image (B, 3, H, W) to dense 512-d vision-language features and 21-class
logits at the stride-8 feature size (h, w) of the student (48 x 160 for the official 384 x 1280 input). Teachers are
frozen: all parameters have ``requires_grad=False``, the module stays in eval mode whatever ``train()`` is called
with, and ``forward`` runs under ``torch.no_grad()``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ssckit.data.datasets import FrameId

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VL_FEATURE_DIM = 512
# datasets/ov_labels/outdoor_labels.txt of Know-Your-Neighbors, as used by VLScene (one prompt per class)
OUTDOOR_PROMPTS: tuple[str, ...] = (
    "ground", "road", "person", "rider", "car", "truck", "bus", "train", "bicycle", "sidewalk", "parking",
    "railtrack", "building", "wall", "fence", "bridge", "pole", "trafficlight", "trafficsign", "vegetation", "others",
)
NUM_PROMPTS = len(OUTDOOR_PROMPTS)
FEATURE_STRIDE = 8


class Teacher(nn.Module, ABC):
    """Frozen teacher: ``forward(left_image, frames=None) -> (features (B, C, h, w), logits (B, K, h, w))``.

    Args:
        feature_size: (h, w) of the outputs, the stride-8 size of the student's image features.
        feature_dim: channels C of the features (512 for LSeg).
        num_classes: number K of text prompts / logit channels (21 for VLScene).

    Subclasses implement ``_predict``; image-based teachers ignore ``frames``, the cache reader needs them.
    Outputs are float32 on the image's device.
    """

    def __init__(self, feature_size: tuple[int, int], feature_dim: int = VL_FEATURE_DIM,
                 num_classes: int = NUM_PROMPTS) -> None:
        super().__init__()
        h, w = (int(v) for v in feature_size)
        if h < 1 or w < 1:
            raise ValueError(f"feature_size must be positive, got {feature_size}")
        self.feature_size = (h, w)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)

    def freeze(self) -> "Teacher":
        """No gradients, eval mode; call at the end of a subclass constructor."""
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        """A teacher never leaves eval mode (BatchNorm statistics and dropout stay frozen)."""
        return super().train(False)

    def forward(self, left_image: torch.Tensor,
                frames: Sequence[FrameId] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if left_image.dim() != 4 or left_image.shape[1] != 3:
            raise ValueError(f"left_image must be (B, 3, H, W), got {tuple(left_image.shape)}")
        if frames is not None and len(frames) != left_image.shape[0]:
            raise ValueError(f"{len(frames)} frame ids for a batch of {left_image.shape[0]} images")
        with torch.no_grad():
            feats, logits = self._predict(left_image, frames)
        b, (h, w) = left_image.shape[0], self.feature_size
        if feats.shape != (b, self.feature_dim, h, w) or logits.shape != (b, self.num_classes, h, w):
            raise RuntimeError(f"{type(self).__name__} returned {tuple(feats.shape)} / {tuple(logits.shape)}, "
                               f"expected ({b}, {self.feature_dim}, {h}, {w}) / ({b}, {self.num_classes}, {h}, {w})")
        return feats.float(), logits.float()

    @abstractmethod
    def _predict(self, left_image: torch.Tensor,
                 frames: Sequence[FrameId] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> features (B, feature_dim, h, w), logits (B, num_classes, h, w); called under no_grad."""


def feature_size_for(image_height: int, image_width: int) -> tuple[int, int]:
    """Stride-8 feature size of the student for an (H, W) input, e.g. (384, 1280) -> (48, 160)."""
    if image_height % FEATURE_STRIDE or image_width % FEATURE_STRIDE:
        raise ValueError(f"image size {image_height}x{image_width} is not a multiple of {FEATURE_STRIDE}")
    return image_height // FEATURE_STRIDE, image_width // FEATURE_STRIDE


def vlscene_left_image(image: np.ndarray, width: int = 1280, height: int = 384) -> np.ndarray:
    """VLScene's test-time image pipeline: uint8 (H0, W0, 3) RGB -> ImageNet-normalised float32 (3, height, width).

    As the official loader (no augmentation): PIL-resize (bicubic) by ``s = width / W0`` to ``(W', H') =
    (round(W0 * s), int(H0 * s))``, then crop the window ``(x0, y0) = ((W' - width) // 2, H' - height)`` of size
    ``width x height``, i.e. keep the bottom ``height`` rows. Parts of the window outside the resized image are black
    (PIL's crop), which happens for KITTI-360 (1408 x 376 with height 384: 8 black rows on top). Deviation: the
    official ``int(W0 * s)`` gives 1279 for W0 = 1241 (float rounding), leaving the last column black; W' is rounded.
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h0, w0 = image.shape[:2]
    scale = float(width) / float(w0)
    new_w, new_h = round(w0 * scale), int(h0 * scale)
    pil = Image.fromarray(image)
    if (new_w, new_h) != (w0, h0):
        pil = pil.resize((new_w, new_h), Image.BICUBIC)
    x0, y0 = int(max(0, new_w - width) / 2), new_h - height
    cropped = np.asarray(pil.crop((x0, y0, x0 + width, y0 + height)), dtype=np.float32) / 255.0  # (height, width, 3)
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(((cropped - mean) / std).transpose(2, 0, 1))  # (3, height, width)
