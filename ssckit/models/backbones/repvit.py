"""RepViT-M2.3 image backbone (timm's blocks) returning the four stage outputs at strides 4/8/16/32.

Layout. The official VLScene config lists 54 blocks after the stem (7x80, 8x160, 36x320, 3x640, feature indices
1..54, index 0 = the 2-conv stem) and taps indices [6, 14, 50, 54]. That list is exactly the stock
``repvit_m2_3`` of the RepViT repository (its 4 commented-out rows are not part of the released model) and of timm
(``depth=(6, 6, 34, 2)``, 22,404,232 parameters without the classifier): timm folds the official block before each
stride-2 block into its stage's ``downsample.pre_block``, so the taps are timm's stage outputs. ImageNet weights in
timm format (``repvit_m2_3.dist_300e_in1k``) or in the official ``features.N`` format therefore load into the
default layout (:meth:`RepViTBackbone.load_pretrained`). ``REPVIT_M2_3_58`` (``depth=(6, 6, 36, 4)``: the commented
rows restored, 7/8/38/5 = 58 blocks) is available for the spec's "stock 58-block" reading; no released weights fit it.

BatchNorm: ``norm_eval=True`` keeps every BN in eval mode (frozen running statistics; affine still trainable), as
the official backbone (SyncBN in eval mode). :func:`official_repvit_key` maps ``img_backbone.features.*`` names
(prefix removed) onto this module.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from torch import Tensor, nn

from ssckit.errors import DataError

REPVIT_M2_3 = (6, 6, 34, 2)  # timm depths of the official / released M2.3 (54 blocks)
REPVIT_M2_3_58 = (6, 6, 36, 4)  # the 58-block variant (official commented-out rows restored)
REPVIT_M2_3_WIDTHS = (80, 160, 320, 640)


class RepViTBackbone(nn.Module):
    """RepViT stem + 4 stages (timm ``RepVitStem``/``RepVitStage``); forward -> [C1, C2, C3, C4]."""

    def __init__(self, widths: Sequence[int] = REPVIT_M2_3_WIDTHS, depths: Sequence[int] = REPVIT_M2_3,
                 mlp_ratio: int = 2, norm_eval: bool = True):
        super().__init__()
        from timm.models.repvit import RepVitStage, RepVitStem  # heavy import; ssckit installs the shim first

        if len(widths) != len(depths):
            raise ValueError(f"widths {tuple(widths)} and depths {tuple(depths)} differ in length")
        self.widths, self.depths = tuple(widths), tuple(depths)
        self.norm_eval = norm_eval
        self.stem = RepVitStem(3, widths[0], nn.GELU)
        self.stages = nn.Sequential(*[
            RepVitStage(widths[max(i - 1, 0)], widths[i], depths[i], mlp_ratio=mlp_ratio, act_layer=nn.GELU,
                        kernel_size=3, downsample=i > 0)
            for i in range(len(widths))])
        self.out_channels: tuple[int, ...] = self.widths
        self.strides: tuple[int, ...] = tuple(4 * 2 ** i for i in range(len(widths)))

    def forward(self, img: Tensor) -> list[Tensor]:
        """img (B, 3, H, W) normalised RGB -> one map per stage, (B, widths[i], H / 4 / 2^i, W / 4 / 2^i)."""
        x = self.stem(img)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def train(self, mode: bool = True) -> "RepViTBackbone":
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def load_pretrained(self, path: str | Path) -> None:
        """Load ImageNet RepViT weights from a local file, in timm (``stem.*``/``stages.*``) or official
        (``features.N.*``) naming; classifier keys are ignored. Missing/unexpected/mis-shaped keys raise DataError.
        """
        from ssckit.models.convert import read_state_dict

        path = Path(path)
        raw = read_state_dict(path)
        sd: dict[str, Tensor] = {}
        problems: list[str] = []
        for key, val in raw.items():
            key = key.removeprefix("module.").removeprefix("backbone.")
            if key.startswith(("head.", "classifier.")):
                continue
            if key.startswith("features."):
                try:
                    key = official_repvit_key(key, self.depths)
                except KeyError:
                    problems.append(f"unmapped {key}")
                    continue
            sd[key] = val
        own = self.state_dict()
        problems += [f"unexpected {k}" for k in sd if k not in own]
        problems += [f"missing {k}" for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        problems += [f"shape {k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                     for k, v in own.items() if k in sd and sd[k].shape != v.shape]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} problems)" if len(problems) > 5 else "")
            raise DataError(path, f"not a RepViT {self.widths}/{self.depths} state dict: {shown}")
        self.load_state_dict(sd, strict=False)


def official_feature_index_map(depths: Sequence[int] = REPVIT_M2_3) -> dict[int, tuple[str, bool]]:
    """Official feature index (1..N) -> (module prefix, is_stride2_block) for timm depths ``depths``."""
    table: dict[int, tuple[str, bool]] = {}
    idx = 1
    for s, depth in enumerate(depths):
        if s > 0:
            table[idx] = (f"stages.{s}.downsample.pre_block", False)
            table[idx + 1] = (f"stages.{s}.downsample", True)
            idx += 2
        for j in range(depth):
            table[idx] = (f"stages.{s}.blocks.{j}", False)
            idx += 1
    return table


_BLOCK_RULES = (  # official stride-1 block -> timm RepViTBlock
    (r"token_mixer\.0\.(.+)", r"token_mixer.\1"),
    (r"token_mixer\.1\.(fc[12]\..+)", r"se.\1"),
    (r"channel_mixer\.m\.0\.(.+)", r"channel_mixer.conv1.\1"),
    (r"channel_mixer\.m\.2\.(.+)", r"channel_mixer.conv2.\1"),
)
_DOWN_RULES = (  # official stride-2 block -> timm RepVitDownsample (minus its pre_block)
    (r"token_mixer\.0\.(.+)", r"spatial_downsample.\1"),
    (r"token_mixer\.2\.(.+)", r"channel_downsample.\1"),
    (r"channel_mixer\.m\.0\.(.+)", r"ffn.conv1.\1"),
    (r"channel_mixer\.m\.2\.(.+)", r"ffn.conv2.\1"),
)


def official_repvit_key(key: str, depths: Sequence[int] = REPVIT_M2_3) -> str:
    """Official ``features.{i}.*`` key (without ``img_backbone.``) -> :class:`RepViTBackbone` key."""
    m = re.fullmatch(r"features\.0\.([02])\.(.+)", key)
    if m:
        return f"stem.conv{1 if m.group(1) == '0' else 2}.{m.group(2)}"
    m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    table = official_feature_index_map(depths)
    if m and int(m.group(1)) in table:
        prefix, is_down = table[int(m.group(1))]
        for pattern, repl in _DOWN_RULES if is_down else _BLOCK_RULES:
            sub = re.fullmatch(pattern, m.group(2))
            if sub:
                return f"{prefix}.{sub.expand(repl)}"
    raise KeyError(f"no ssckit mapping for official RepViT key {key!r}")
