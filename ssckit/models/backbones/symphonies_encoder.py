"""Symphonies image encoder: ResNet-50 + MaskDINO pixel decoder + 128-d output projections + instance queries.

Mirrors the official ``MMDetWrapper`` (spec §3, §4): the three image levels handed to the decoder are
[raw ResNet C2 (stride 4), pixel-decoder output at stride 8, pixel-decoder output at stride 16], each passed
through ``out_projs[i]`` = 1x1 conv -> BN -> ReLU -> 1x1 conv to ``out_dims`` channels. The instance queries are
plain learnable rows (``query_embed``) and their 2D reference points are ``sigmoid(pts_embed)``; neither depends
on the image.

Learning rates: the official recipe gives ``backbone.*`` and ``pixel_decoder.*`` (its ``encoder.model``) 0.1x the
base lr; ``query_embed``, ``pts_embed`` and ``out_projs`` use the full lr.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from torch import Tensor, nn

from ssckit.errors import SsckitError
from ssckit.models.backbones.pixel_decoder import MaskDINOPixelDecoder
from ssckit.models.backbones.resnet import ResNetBackbone

WRAPPER_PREFIXES = ("query_embed.", "pts_embed.", "out_projs.")


class EncoderOutput(NamedTuple):
    feats: list[Tensor]  # 3 maps (B, out_dims, H_s, W_s) at strides 4, 8, 16
    queries: Optional[Tensor]  # (B, num_queries, out_dims); no positional embedding; None without queries
    pred_pts: Optional[Tensor]  # (B, num_queries, 2) normalized image (x, y) = (u/W, v/H) in (0, 1); or None


def out_projection(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv -> BN -> ReLU -> 1x1 conv (official ``out_projs[i]``, children 0, 1, 2, 3)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True), nn.Conv2d(out_channels, out_channels, 1))


class SymphoniesEncoder(nn.Module):
    """Image -> (3 feature levels, instance queries, query reference points). Defaults are the official config.

    Args:
        base_width: ResNet stem/stage-1 width (64 = ResNet-50; outputs ``4*base_width*(1,2,4,8)`` channels).
        embed_dims, num_heads, num_points, num_layers, ffn_dims, dropout, num_groups: pixel-decoder sizes.
        out_dims: channels of the returned levels and queries. num_queries: number of instance queries.
        use_queries: build ``query_embed`` / ``pts_embed`` (False for the no-instance-query ablation, so that DDP
            sees no unused parameters; the outputs' queries and pred_pts are then None).
        frozen_bn: freeze the ResNet BatchNorms (statistics and affine), as the official ``norm_eval``.
        build_unused: also build the pixel decoder's FPN step and mask-feature conv (never used; see
            :mod:`ssckit.models.backbones.pixel_decoder`). Keep False for DDP training.
        pretrained_encoder: load ``checkpoint`` at construction (the pretrained-vs-random ablation switch; the
            path is ignored when False). See :meth:`load_pretrained` for the accepted files. Nothing is downloaded.
        checkpoint: local path of the weights.
    """

    def __init__(self, base_width: int = 64, embed_dims: int = 256, num_heads: int = 8, num_points: int = 4,
                 num_layers: int = 6, ffn_dims: int = 2048, dropout: float = 0.0, num_groups: int = 32,
                 out_dims: int = 128, num_queries: int = 100, frozen_bn: bool = True, build_unused: bool = False,
                 pretrained_encoder: bool = False, checkpoint: Optional[str | Path] = None, use_queries: bool = True):
        super().__init__()
        self.backbone = ResNetBackbone(base_width, frozen_bn=frozen_bn)
        c2, c3, c4, c5 = self.backbone.out_channels
        self.pixel_decoder = MaskDINOPixelDecoder((c2, c3, c4, c5), embed_dims, num_heads, num_points, num_layers,
                                                  ffn_dims, dropout, num_extra_levels=1, num_groups=num_groups,
                                                  mask_dims=embed_dims, build_unused=build_unused)
        self.out_projs = nn.ModuleList(out_projection(c, out_dims) for c in (c2, embed_dims, embed_dims))
        self.query_embed = nn.Embedding(num_queries, out_dims) if use_queries else None
        self.pts_embed = nn.Embedding(num_queries, 2) if use_queries else None
        self.out_dims = out_dims
        self.strides: tuple[int, int, int] = (4, 8, 16)
        if pretrained_encoder:
            if checkpoint is None:
                raise SsckitError("pretrained_encoder is set but no encoder checkpoint path was given")
            self.load_pretrained(checkpoint)

    def load_pretrained(self, path: str | Path) -> None:
        """Load local weights; the format is recognised from the keys:

        - official Symphonies checkpoint (``encoder.*``, optionally Lightning-wrapped): the whole encoder;
        - MaskDINO COCO checkpoint (``backbone.*`` + ``panoptic_head.*``, the official starting point): ResNet and
          pixel decoder; ``out_projs`` and the query embeddings stay freshly initialised, as in the official code;
        - ImageNet ResNet-50 (timm/torchvision names): ResNet only.
        """
        from ssckit.models.convert import load_official_encoder_state, maskdino_to_official, read_state_dict

        sd = read_state_dict(path)
        if any(k.startswith("encoder.") for k in sd):
            load_official_encoder_state(self, sd)
        elif any(k.startswith("panoptic_head.") for k in sd):
            missing = load_official_encoder_state(self, maskdino_to_official(sd), allow_missing=True)
            lacking = [k for k in missing if not k.startswith(WRAPPER_PREFIXES) and "num_batches_tracked" not in k]
            if lacking:
                raise SsckitError(f"{path}: MaskDINO checkpoint lacks {len(lacking)} encoder entries, "
                                  f"e.g. {lacking[:3]}")
        else:
            self.backbone.load_pretrained(path)

    def project(self, res2: Tensor, multi_scale: Sequence[Tensor]) -> EncoderOutput:
        """Output head: C2 (B, C2, H/4, W/4) and pixel-decoder levels [s8, s16, ...] (B, embed_dims, .) ->
        :class:`EncoderOutput`."""
        levels = (res2, multi_scale[0], multi_scale[1])
        feats = [proj(x) for proj, x in zip(self.out_projs, levels)]
        b = res2.shape[0]
        if self.query_embed is None or self.pts_embed is None:
            return EncoderOutput(feats, None, None)
        queries = self.query_embed.weight[None].repeat(b, 1, 1)  # (B, Q, out_dims)
        pred_pts = self.pts_embed.weight.sigmoid()[None].repeat(b, 1, 1)  # (B, Q, 2)
        return EncoderOutput(feats, queries, pred_pts)

    def forward(self, img: Tensor) -> EncoderOutput:
        """img (B, 3, H, W), ImageNet-normalized RGB -> :class:`EncoderOutput`."""
        res = self.backbone(img)
        return self.project(res[0], self.pixel_decoder(res).multi_scale)
