"""MaskDINO pixel decoder (the mmdet ``MaskDINOEncoder`` used by Symphonies), in pure PyTorch.

Data flow (official widths; spec §3):
- input projections: C3, C4, C5 -> 1x1 conv + GroupNorm to ``embed_dims``; ``num_extra_levels`` more levels by
  3x3 stride-2 conv + GroupNorm, the first on C5, each next one on the previous projection. Level order is
  low-to-high stride: [s8, s16, s32, s64].
- positions: normalized sine encoding (mmdet ``SinePositionalEncoding(normalize=True)``, ``embed_dims / 2`` steps
  per axis, y first) of each level, plus a learned per-level ``level_embed``.
- ``num_layers`` post-LN deformable encoder layers (mmdet ``DeformableDetrTransformerEncoderLayer``) over the
  concatenated tokens of all levels; reference points are the pixel centres of each token's own level.
- unused by Symphonies (built only with ``build_unused=True``): one FPN step for C2 (lateral 1x1 conv + GN, add
  the bilinearly upsampled s8 output, 3x3 conv + GN + ReLU) and the 1x1 ``mask_features`` conv. The official
  model builds and counts them (722,176 params) but discards their outputs; leaving them out keeps DDP's
  unused-parameter check quiet, keeping them reproduces the 59,310,044 count and allows strict official loading.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.ops.linear import linear
from ssckit.ops.msda import MultiScaleDeformableAttention


def sine_position_encoding(height: int, width: int, num_feats: int, temperature: float = 10000.0,
                           scale: float = 2 * math.pi, eps: float = 1e-6, offset: float = 0.0,
                           device: Optional[torch.device] = None) -> Tensor:
    """Normalized 2D sine encoding of an unpadded map -> (2*num_feats, H, W): [y part, x part], each
    interleaving sin/cos of ``(i + 1 + offset) / (n + eps) * scale / temperature**(2*(k//2)/num_feats)``."""
    y = (torch.arange(1, height + 1, dtype=torch.float32, device=device) + offset) / (height + eps) * scale
    x = (torch.arange(1, width + 1, dtype=torch.float32, device=device) + offset) / (width + eps) * scale
    k = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)

    def embed(t: Tensor) -> Tensor:  # (n,) -> (n, F), sin on even channels, cos on odd ones
        a = t[:, None] / dim_t
        return torch.stack((a[:, 0::2].sin(), a[:, 1::2].cos()), dim=-1).flatten(1)

    pos_y = embed(y)[:, None, :].expand(height, width, num_feats)  # (H, W, F)
    pos_x = embed(x)[None, :, :].expand(height, width, num_feats)  # (H, W, F)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)  # (2F, H, W)


def level_reference_points(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> Tensor:
    """Pixel centres ((j+0.5)/W, (i+0.5)/H) of every token, levels concatenated -> (N, 2) normalized (x, y)."""
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        refs.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2))  # (h*w, 2)
    return torch.cat(refs, dim=0)


def conv_gn(c_in: int, c_out: int, kernel: int, stride: int, groups: int, bias: bool,
            relu: bool = False) -> nn.Sequential:
    """Conv2d (padding k//2) + GroupNorm (+ ReLU); submodules ``0`` (conv) and ``1`` (norm)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias),
                               nn.GroupNorm(groups, c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DeformableEncoderLayer(nn.Module):
    """Post-LN deformable encoder layer: x = LN1(x + MSDA(x + pos)); x = LN2(x + FFN(x)).

    The attention residual is MSDA's own ``add_identity`` (mmcv's ``dropout(out) + query``); the layer adds no
    second one, as in mmdet's ``DeformableDetrTransformerEncoderLayer``. FFN = Linear, ReLU, Dropout, Linear,
    Dropout (``ffn.0`` and ``ffn.3`` are the Linears).
    """

    def __init__(self, embed_dims: int, num_heads: int, num_levels: int, num_points: int, ffn_dims: int,
                 dropout: float):
        super().__init__()
        self.attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points, dropout,
                                                  add_identity=True)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = nn.Sequential(nn.Linear(embed_dims, ffn_dims), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dims, embed_dims), nn.Dropout(dropout))
        self.norm2 = nn.LayerNorm(embed_dims)

    def forward(self, x: Tensor, pos: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor) -> Tensor:
        """x, pos (B, N, C); reference_points (B, N, L, 2) normalized (x, y); spatial_shapes (L, 2) (h, w)."""
        x = self.norm1(self.attn(x, x, reference_points, spatial_shapes, level_start_index, query_pos=pos))
        if self.training and any(m.p > 0 for m in (self.ffn[2], self.ffn[4])):
            return self.norm2(x + self.ffn(x))
        fc1, fc2 = self.ffn[0], self.ffn[3]  # ReLU and the residual fused into the linears (ssckit.ops.linear)
        return self.norm2(linear(linear(x, fc1.weight, fc1.bias, "relu"), fc2.weight, fc2.bias, residual=x))


class PixelDecoderOutput(NamedTuple):
    multi_scale: list[Tensor]  # encoder outputs, (B, C, H_l, W_l), strides low to high (s8, s16, s32, s64)
    mask_features: Optional[Tensor]  # (B, mask_dims, H2, W2) at C2's stride; None unless build_unused


class MaskDINOPixelDecoder(nn.Module):
    """MaskDINO pixel decoder over backbone features [C2, C3, C4, C5] (see the module docstring)."""

    def __init__(self, in_channels: Sequence[int] = (256, 512, 1024, 2048), embed_dims: int = 256,
                 num_heads: int = 8, num_points: int = 4, num_layers: int = 6, ffn_dims: int = 2048,
                 dropout: float = 0.0, num_extra_levels: int = 1, num_groups: int = 32, mask_dims: int = 256,
                 pe_temperature: float = 10000.0, build_unused: bool = False):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"in_channels must list C2..C5 (4 values); got {list(in_channels)}")
        if embed_dims % 2:
            raise ValueError(f"embed_dims must be even for the sine encoding; got {embed_dims}")
        self.embed_dims = embed_dims
        self.num_levels = 3 + num_extra_levels
        self.pe_temperature = pe_temperature
        self.build_unused = build_unused
        projs = [conv_gn(c, embed_dims, 1, 1, num_groups, bias=True) for c in in_channels[1:]]
        for i in range(num_extra_levels):
            projs.append(conv_gn(in_channels[3] if i == 0 else embed_dims, embed_dims, 3, 2, num_groups, bias=True))
        self.input_proj = nn.ModuleList(projs)
        self.level_embed = nn.Parameter(torch.empty(self.num_levels, embed_dims))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(embed_dims, num_heads, self.num_levels, num_points, ffn_dims, dropout)
            for _ in range(num_layers))
        if build_unused:
            self.fpn_lateral = conv_gn(in_channels[0], embed_dims, 1, 1, num_groups, bias=False)
            self.fpn_output = conv_gn(embed_dims, embed_dims, 3, 1, num_groups, bias=False, relu=True)
            self.mask_features = nn.Conv2d(embed_dims, mask_dims, 1)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """MaskDINO init: xavier input projections (zero bias), xavier on every encoder matrix followed by the
        MSDA init, N(0,1) level embedding, kaiming-uniform(a=1) FPN and mask-feature convs (zero bias)."""
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for layer in self.layers:
            layer.attn.reset_parameters()
        nn.init.normal_(self.level_embed)
        if self.build_unused:
            for conv in (self.fpn_lateral[0], self.fpn_output[0], self.mask_features):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)

    def project_inputs(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """[C2, C3, C4, C5] -> the ``num_levels`` projected maps (B, C, H_l, W_l), strides low to high."""
        srcs = [proj(x.float()) for proj, x in zip(self.input_proj, feats[1:])]
        for proj in self.input_proj[3:]:
            srcs.append(proj(srcs[-1] if len(srcs) > 3 else feats[3].float()))
        return srcs

    def position_encodings(self, srcs: Sequence[Tensor]) -> list[Tensor]:
        """Sine encoding per level, (B, C, H_l, W_l), without the level embedding."""
        return [sine_position_encoding(s.shape[-2], s.shape[-1], self.embed_dims // 2, self.pe_temperature,
                                       device=s.device).expand(s.shape[0], -1, -1, -1) for s in srcs]

    def encode(self, srcs: Sequence[Tensor], pos: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Deformable encoder over all levels -> memory (B, N, C), spatial_shapes (L, 2), level_start_index (L,)."""
        b = srcs[0].shape[0]
        shapes = [(s.shape[-2], s.shape[-1]) for s in srcs]
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=srcs[0].device)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
        x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], dim=1)  # (B, N, C)
        lvl_pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i] for i, p in enumerate(pos)], dim=1)
        ref = level_reference_points(shapes, x.device)  # (N, 2)
        ref = ref[None, :, None, :].expand(b, -1, len(shapes), 2)  # (B, N, L, 2): same point on every level
        for layer in self.layers:
            x = layer(x, lvl_pos, ref, spatial_shapes, level_start_index)
        return x, spatial_shapes, level_start_index

    def forward(self, feats: Sequence[Tensor]) -> PixelDecoderOutput:
        """feats [C2, C3, C4, C5] (B, in_channels[i], H_i, W_i). Runs in fp32 (autocast off), as the official."""
        with torch.autocast(device_type=feats[0].device.type, enabled=False):
            srcs = self.project_inputs(feats)
            memory, spatial_shapes, _ = self.encode(srcs, self.position_encodings(srcs))
            b = memory.shape[0]
            tokens = memory.split([h * w for h, w in spatial_shapes.tolist()], dim=1)
            multi_scale = [t.transpose(1, 2).reshape(b, self.embed_dims, *s.shape[-2:])  # (B, C, H_l, W_l)
                           for t, s in zip(tokens, srcs)]
            mask_features = None
            if self.build_unused:
                c2 = self.fpn_lateral(feats[0].float())
                up = F.interpolate(multi_scale[0], size=c2.shape[-2:], mode="bilinear", align_corners=False)
                mask_features = self.mask_features(self.fpn_output(c2 + up))
        return PixelDecoderOutput(multi_scale, mask_features)
