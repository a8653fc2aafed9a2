"""LSeg (Li et al., ICLR 2022) as VLScene's frozen vision-language teacher (VLScene spec §2.4, §7.1, §7.2).

Image encoder: timm ViT-L/16-384 read at blocks 5/11/17/23, DPT reassembly with the "project" readout
(strides 4/8/16/32 -> 256/512/1024/1024 ch), 3x3 projections to 256 ch, four refine blocks (BatchNorm residual units,
x2 bilinear upsampling, align_corners=True) and a 1x1 head to 512-d pixel embeddings at half the input resolution.
Logits = (1/0.07) * cosine(pixel embedding, text embedding), upsampled x2 (bilinear, align_corners=True).
Text encoder: CLIP ViT-B/32 (:mod:`ssckit.models.teachers.clip`), whose weights are part of the LSeg checkpoint.

The module tree reproduces LSeg's state-dict keys under ``net.`` (the Lightning ``demo_e200.ckpt`` prefix); in the
VLScene detector the same keys sit under ``clip_net.vlseg_encoder.``; both load with
:meth:`LSegTeacher.load_checkpoint`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ssckit.data.datasets import FrameId
from ssckit.errors import DataError
from ssckit.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, NUM_PROMPTS, Teacher
from ssckit.models.teachers.clip import CLIP, CLIPConfig
from ssckit.models.teachers.weights import load_lseg_state_dict, load_text_embeddings, strict_key_check

LOGIT_SCALE = 1.0 / 0.07
LSEG_MEAN = 0.5  # LSeg's input normalisation (x - 0.5) / 0.5, per channel
LSEG_STD = 0.5


@dataclass(frozen=True)
class LSegConfig:
    """LSeg sizes; the defaults are the released "clip_vitl16_384" model (smaller values are for tests)."""

    vit_img_size: int = 384
    vit_patch_size: int = 16
    vit_embed_dim: int = 1024
    vit_depth: int = 24
    vit_heads: int = 16
    vit_num_classes: int = 1000  # the unused ImageNet head is part of the checkpoint
    hooks: tuple[int, int, int, int] = (5, 11, 17, 23)
    reassemble_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    features: int = 256
    out_dim: int = 512
    clip: CLIPConfig = field(default_factory=CLIPConfig)


class ProjectReadout(nn.Module):
    """DPT "project" readout: concat(patch token, class token) -> Linear(2C, C) -> GELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]  # (B, N, C)
        return self.project(torch.cat([patches, tokens[:, :1].expand_as(patches)], dim=-1))


def _reassemble(vit_dim: int, channels: int, resample: nn.Module | None) -> nn.Sequential:
    """Indices as in LSeg: 0 readout, 1-2 token->map reshape (no weights), 3 1x1 conv, 4 optional resampling."""
    layers = [ProjectReadout(vit_dim), nn.Identity(), nn.Identity(), nn.Conv2d(vit_dim, channels, 1)]
    return nn.Sequential(*layers, *([resample] if resample is not None else []))


class DPTViT(nn.Module):
    """ViT backbone (``model``) + the four reassembly branches (``act_postprocess1..4``)."""

    def __init__(self, c: LSegConfig) -> None:
        super().__init__()
        if len(c.hooks) != 4 or max(c.hooks) >= c.vit_depth:
            raise ValueError(f"hooks {c.hooks} must be 4 block indices below vit_depth={c.vit_depth}")
        if c.vit_patch_size != 16:
            raise ValueError("the DPT reassembly (x4, x2, x1, x1/2 of the token grid) assumes 16-pixel patches")
        self.hooks = tuple(c.hooks)
        self.patch_size = c.vit_patch_size
        self.model = VisionTransformer(img_size=c.vit_img_size, patch_size=c.vit_patch_size,
                                       embed_dim=c.vit_embed_dim, depth=c.vit_depth, num_heads=c.vit_heads,
                                       num_classes=c.vit_num_classes)
        d, ch = c.vit_embed_dim, c.reassemble_channels
        self.act_postprocess1 = _reassemble(d, ch[0], nn.ConvTranspose2d(ch[0], ch[0], 4, stride=4))
        self.act_postprocess2 = _reassemble(d, ch[1], nn.ConvTranspose2d(ch[1], ch[1], 2, stride=2))
        self.act_postprocess3 = _reassemble(d, ch[2], None)
        self.act_postprocess4 = _reassemble(d, ch[3], nn.Conv2d(ch[3], ch[3], 3, stride=2, padding=1))

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """(1, 1 + gh*gw, C): the class-token embedding + the patch grid bilinearly resized (align_corners=False)."""
        pos = self.model.pos_embed
        grid = pos[:, 1:]
        g0 = int(round(grid.shape[1] ** 0.5))
        grid = grid.reshape(1, g0, g0, -1).permute(0, 3, 1, 2)  # (1, C, g0, g0)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False)
        return torch.cat([pos[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = image.shape
        gh, gw = h // self.patch_size, w // self.patch_size
        x = self.model.patch_embed.proj(image).flatten(2).transpose(1, 2)  # (B, gh*gw, C)
        x = torch.cat([self.model.cls_token.expand(b, -1, -1), x], dim=1) + self.position_embedding(gh, gw)
        x = self.model.pos_drop(x)
        taps = []
        for i, block in enumerate(self.model.blocks[: max(self.hooks) + 1]):
            x = block(x)
            if i in self.hooks:
                taps.append(x)
        outs = []
        for tokens, branch in zip(taps, (self.act_postprocess1, self.act_postprocess2, self.act_postprocess3,
                                         self.act_postprocess4)):
            y = branch[0](tokens).transpose(1, 2).reshape(b, -1, gh, gw)  # (B, C, gh, gw)
            outs.append(branch[3:](y))
        return outs


class ResidualConvUnit(nn.Module):
    """x + BN(conv(ReLU(BN(conv(ReLU(x)))))), 3x3 convs without bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(F.relu(x)))
        return x + self.bn2(self.conv2(F.relu(y)))


class FusionBlock(nn.Module):
    """DPT refine block: (x + rcu1(skip)) -> rcu2 -> x2 bilinear (align_corners=True) -> 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(channels, channels, 1)
        self.resConfUnit1 = ResidualConvUnit(channels)
        self.resConfUnit2 = ResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class LSegNet(nn.Module):
    """LSeg network with the official module names (``clip_pretrained``, ``pretrained``, ``scratch``)."""

    def __init__(self, config: LSegConfig = LSegConfig()) -> None:
        super().__init__()
        c = self.config = config
        if c.clip.embed_dim != c.out_dim:
            raise ValueError(f"CLIP embed_dim {c.clip.embed_dim} != LSeg out_dim {c.out_dim}")
        self.clip_pretrained = CLIP(c.clip)
        self.pretrained = DPTViT(c)
        self.scratch = nn.Module()
        for i, ch in enumerate(c.reassemble_channels, start=1):
            self.scratch.add_module(f"layer{i}_rn", nn.Conv2d(ch, c.features, 3, padding=1, bias=False))
        for i in range(1, 5):
            self.scratch.add_module(f"refinenet{i}", FusionBlock(c.features))
        self.scratch.head1 = nn.Conv2d(c.features, c.out_dim, 1)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """LSeg-normalised (B, 3, S, S), S a multiple of 32 -> pixel embeddings (B, out_dim, S/2, S/2)."""
        s = self.scratch
        l1, l2, l3, l4 = (conv(x) for conv, x in zip((s.layer1_rn, s.layer2_rn, s.layer3_rn, s.layer4_rn),
                                                     self.pretrained(image)))
        path = s.refinenet4(l4)
        path = s.refinenet3(path, l3)
        path = s.refinenet2(path, l2)
        path = s.refinenet1(path, l1)
        return s.head1(path)

    @staticmethod
    def logits(pixel_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) x (K, D) -> (1/0.07)-scaled cosine similarities, upsampled x2: (B, K, 2h, 2w)."""
        img = F.normalize(pixel_embeddings, dim=1)
        txt = F.normalize(text_embeddings.to(img.dtype), dim=1)
        out = LOGIT_SCALE * torch.einsum("bdhw,kd->bkhw", img, txt)
        return F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)


class LSegTeacher(Teacher):
    """LSeg on the left image, resampled to the student's stride-8 grid (VLScene's single-crop path).

    Path: [re-normalise ImageNet -> LSeg mean/std 0.5] -> bilinear resize to ``crop_size`` wide (``int(crop * H / W)``
    tall) -> pad bottom to ``crop x crop`` with -1 (black) -> LSeg -> crop the valid rows -> bilinear resize to
    ``feature_size``. Runs under fp16 autocast on CUDA only.

    Args:
        feature_size: (h, w) of the outputs (48, 160 for a 384 x 1280 input).
        text_embeddings: (K, out_dim) prompt embeddings (see :func:`load_text_embeddings`), or None to set later with
            :meth:`set_text_embeddings` (e.g. from token ids via :meth:`encode_prompts`).
        config: network sizes (default: the released ViT-L/16 model).
        crop_size: LSeg's square input side (480 in VLScene).
        imagenet_input_quirk: feed the ImageNet-normalised image unchanged, as the official code (§7.2); default off.
        misaligned_features_quirk: crop the half-resolution feature map with full-resolution bounds, as the official
            code (§7.1: content lands in the top part of the output); default off (rows scaled by the map's stride).
        device: where to build the network; "meta" builds without memory (for counting or a later assign-load).
    """

    def __init__(self, feature_size: tuple[int, int] = (48, 160), text_embeddings: torch.Tensor | None = None,
                 config: LSegConfig = LSegConfig(), crop_size: int = 480, imagenet_input_quirk: bool = False,
                 misaligned_features_quirk: bool = False, device: str | torch.device | None = None) -> None:
        num_classes = NUM_PROMPTS if text_embeddings is None else int(text_embeddings.shape[0])
        super().__init__(feature_size, config.out_dim, num_classes)
        if crop_size % (2 * config.vit_patch_size):
            raise ValueError(f"crop_size {crop_size} must be a multiple of {2 * config.vit_patch_size}")
        self.crop_size = int(crop_size)
        self.imagenet_input_quirk = bool(imagenet_input_quirk)
        self.misaligned_features_quirk = bool(misaligned_features_quirk)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self.net = LSegNet(config)
        text_device = None if device is None or torch.device(device).type == "meta" else device
        self.register_buffer("text_embeddings", torch.zeros(num_classes, config.out_dim, device=text_device),
                             persistent=False)
        self._has_text = False
        if text_embeddings is not None:
            self.set_text_embeddings(text_embeddings)
        self.freeze()

    # --- weights ---------------------------------------------------------------------------------------------------

    def load_checkpoint(self, path: str | os.PathLike) -> "LSegTeacher":
        """Load LSeg weights from a local checkpoint (Lightning ``demo_e200.ckpt`` with ``net.`` keys, a VLScene
        checkpoint with ``clip_net.vlseg_encoder.`` keys, or a bare state dict). The key set must match exactly
        (:class:`~ssckit.errors.DataError` lists missing / unexpected / mis-shaped keys). Works on a meta-built
        teacher too (the checkpoint's tensors are assigned, then cast to float32)."""
        state = load_lseg_state_dict(path)
        strict_key_check(path, state, self.net.state_dict())
        on_meta = any(p.is_meta for p in self.net.parameters())
        self.net.load_state_dict(state, strict=True, assign=on_meta)
        self.net.float()
        self.freeze()
        return self

    def encode_prompts(self, token_ids: torch.Tensor) -> torch.Tensor:
        """CLIP text embeddings (K, out_dim) of BPE token ids (K, context_length) with the loaded text tower."""
        with torch.no_grad():
            return self.net.clip_pretrained.encode_text(token_ids).float()

    def set_text_embeddings(self, embeddings: torch.Tensor) -> None:
        """Set the (K, out_dim) prompt embeddings; integer input is taken as token ids and encoded first."""
        if not embeddings.dtype.is_floating_point:
            embeddings = self.encode_prompts(embeddings)
        if embeddings.shape != self.text_embeddings.shape:
            raise ValueError(f"text embeddings must be {tuple(self.text_embeddings.shape)}, "
                             f"got {tuple(embeddings.shape)}")
        self.text_embeddings.copy_(embeddings.detach().float())
        self._has_text = True

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, text_embeddings: str | os.PathLike | torch.Tensor,
                        feature_size: tuple[int, int] = (48, 160), imagenet_input_quirk: bool = False,
                        misaligned_features_quirk: bool = False, device: str | torch.device = "cpu",
                        config: LSegConfig = LSegConfig(), crop_size: int = 480) -> "LSegTeacher":
        """The released teacher: build on the meta device, load ``checkpoint``, set the text embeddings (a tensor or
        a file for :func:`load_text_embeddings`; integer token ids are encoded with the checkpoint's CLIP)."""
        text = text_embeddings if isinstance(text_embeddings, torch.Tensor) else load_text_embeddings(text_embeddings)
        teacher = cls(feature_size, None, config, crop_size, imagenet_input_quirk=imagenet_input_quirk,
                      misaligned_features_quirk=misaligned_features_quirk, device="meta")
        if text.shape[0] != teacher.num_classes:
            teacher.num_classes = int(text.shape[0])
            teacher.text_embeddings = torch.zeros(teacher.num_classes, teacher.feature_dim)
        teacher.load_checkpoint(checkpoint)
        try:
            teacher.set_text_embeddings(text)
        except ValueError as e:
            if isinstance(text_embeddings, torch.Tensor):
                raise
            raise DataError(text_embeddings, str(e)) from None
        return teacher.to(device)

    # --- forward ---------------------------------------------------------------------------------------------------

    def lseg_input(self, left_image: torch.Tensor) -> tuple[torch.Tensor, int]:
        """ImageNet-normalised (B, 3, H, W), W > H -> LSeg input (B, 3, crop, crop) and the valid height."""
        b, _, h, w = left_image.shape
        if w <= h:
            raise ValueError(f"LSeg single-crop input needs a landscape image, got {h}x{w}")
        height = int(self.crop_size * h / w)
        x = left_image.float()
        if not self.imagenet_input_quirk:
            mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
            std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
            x = (x * std + mean - LSEG_MEAN) / LSEG_STD
        x = F.interpolate(x, size=(height, self.crop_size), mode="bilinear", align_corners=False)
        return F.pad(x, (0, 0, 0, self.crop_size - height), value=-LSEG_MEAN / LSEG_STD), height

    def valid_rows(self, height: int, map_height: int) -> int:
        """Rows of a (map_height)-row LSeg output that hold the image (the official crop for the quirk)."""
        if self.misaligned_features_quirk:
            return height
        return max(1, round(height * map_height / self.crop_size))

    def _predict(self, left_image: torch.Tensor,
                 frames: Sequence[FrameId] | None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._has_text:
            raise RuntimeError("LSegTeacher has no text embeddings: pass text_embeddings or call "
                               "set_text_embeddings() first")
        x, height = self.lseg_input(left_image)
        with torch.autocast("cuda", dtype=torch.float16, enabled=x.is_cuda):
            pix = self.net.encode_image(x)  # (B, D, crop/2, crop/2)
            logits = self.net.logits(pix, self.text_embeddings)  # (B, K, crop, crop)
        pix, logits = pix.float(), logits.float()
        logits = F.interpolate(logits[:, :, :height], size=self.feature_size, mode="bilinear", align_corners=False)
        rows = self.valid_rows(height, pix.shape[2])
        feats = F.interpolate(pix[:, :, :rows], size=self.feature_size, mode="bilinear", align_corners=False)
        return feats, logits
