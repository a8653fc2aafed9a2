"""Pre-LN transformer blocks of Symphonies: multi-head attention and deformable attention, each with an optional
FFN (Linear-act-Linear). Parameter names follow the official code (``norm1``, ``attn``, ``norm2``, ``ffn``)."""
from __future__ import annotations

from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.models.layers.squeeze_attention import DeformableSqueezeAttention
from ssckit.ops.linear import linear
from ssckit.ops.msda import MultiScaleDeformableAttention


def _ffn(embed_dims: int, mlp_ratio: float, act_layer: Callable[[], nn.Module]) -> nn.Sequential:
    hidden = int(embed_dims * mlp_ratio)
    return nn.Sequential(nn.Linear(embed_dims, hidden), act_layer(), nn.Linear(hidden, embed_dims))


def ffn_residual(ffn: nn.Sequential, x: Tensor, residual: Tensor) -> Tensor:
    """``residual + ffn(x)`` with the activation and the add fused into the linears (:func:`ssckit.ops.linear`)
    when the activation is a plain (erf) GELU or ReLU; the Sequential as built otherwise."""
    fc1, act, fc2 = ffn
    name = "gelu" if type(act) is nn.GELU and act.approximate == "none" else \
        "relu" if type(act) is nn.ReLU else None
    if name is None:
        return residual + ffn(x)
    return linear(linear(x, fc1.weight, fc1.bias, name), fc2.weight, fc2.bias, residual=residual)


def multihead_attention(attn: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor,
                        residual: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
    """``residual + attn(query, key, value)[0]`` for a batch-first ``nn.MultiheadAttention`` without extra bias
    / zero-attention options, computed from its parameters: fused-bias projections (:func:`ssckit.ops.linear`),
    ``scaled_dot_product_attention`` and the residual fused into the output projection. Inference path."""
    c = attn.embed_dim
    w_q, w_k, w_v = attn.in_proj_weight.split(c)
    b_q, b_k, b_v = attn.in_proj_bias.split(c) if attn.in_proj_bias is not None else (None, None, None)
    (b, n_q, _), n_k, h = query.shape, key.shape[1], attn.num_heads
    q = linear(query, w_q, b_q).view(b, n_q, h, c // h).transpose(1, 2)  # (B, H, Nq, d)
    k = linear(key, w_k, b_k).view(b, n_k, h, c // h).transpose(1, 2)
    v = linear(value, w_v, b_v).view(b, n_k, h, c // h).transpose(1, 2)
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # True = attend
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Nq, d)
    out = out.transpose(1, 2).reshape(b, n_q, c)
    return linear(out, attn.out_proj.weight, attn.out_proj.bias, residual=residual)


def _plain_mha(attn: nn.MultiheadAttention) -> bool:
    return (attn.batch_first and attn._qkv_same_embed_dim and attn.bias_k is None and attn.bias_v is None
            and not attn.add_zero_attn)


class TransformerLayer(nn.Module):
    """``q <- q + MHA(LN(q) + pos_q, k + pos_k, v)``, then ``q <- q + FFN(LN(q))`` when ``mlp_ratio > 0``.

    Keys and values are *not* normalized (official behaviour); with no key/value given it is self-attention on the
    raw query, with ``key_pos = query_pos``.
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, mlp_ratio: float = 4, qkv_bias: bool = True,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = norm_layer(embed_dims)
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, bias=qkv_bias, batch_first=True)
        self.norm2 = norm_layer(embed_dims) if mlp_ratio > 0 else None
        self.ffn = _ffn(embed_dims, mlp_ratio, act_layer) if mlp_ratio > 0 else None

    def forward(self, query: Tensor, key: Optional[Tensor] = None, value: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None, key_pos: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Nq, C); key/value (B, Nk, C); key_padding_mask (B, Nk) True = ignore. -> (B, Nq, C)."""
        if key is None and value is None:
            key = value = query
            key_pos = query_pos
        if key_pos is not None:
            key = key + key_pos
        q = self.norm1(query)
        if query_pos is not None:
            q = q + query_pos
        if not self.training and _plain_mha(self.attn):  # same math, fewer passes (see multihead_attention)
            query = multihead_attention(self.attn, q, key, value, query, key_padding_mask)
        else:
            query = query + self.attn(q, key, value, key_padding_mask=key_padding_mask, need_weights=False)[0]
        if self.ffn is not None:
            query = ffn_residual(self.ffn, self.norm2(query), query)
        return query


class DeformableTransformerLayer(nn.Module):
    """``q <- q + MSDA(LN(q), value, ref, pos)``, then ``q <- q + FFN(LN(q))`` when ``mlp_ratio > 0``.

    With ``add_identity=True`` the MSDA itself adds ``LN(q)`` back (mmcv), so the update is
    ``q + LN(q) + drop(attn)`` as in the official model (spec §14.1). ``squeeze=True`` uses
    :class:`DeformableSqueezeAttention` (3D value volumes, ``ref_pts`` (B, Nq, L, 3) in (x, y, z), shapes (L, 3));
    otherwise plain MSDA (``ref_pts`` (B, Nq, L, 2) in (x, y), shapes (L, 2) as (h, w)).
    """

    def __init__(self, embed_dims: int, num_heads: int = 8, num_levels: int = 3, num_points: int = 4,
                 mlp_ratio: float = 4, dropout: float = 0.1, add_identity: bool = True, squeeze: bool = False,
                 z_offset_quirk: bool = True, centred_refs: bool = False,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = norm_layer(embed_dims)
        self.add_identity = add_identity
        if squeeze:
            self.attn: nn.Module = DeformableSqueezeAttention(embed_dims, num_heads, num_levels, num_points,
                                                              dropout, add_identity, z_offset_quirk, centred_refs)
        else:
            self.attn = MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points, dropout,
                                                      add_identity)
        self.norm2 = norm_layer(embed_dims) if mlp_ratio > 0 else None
        self.ffn = _ffn(embed_dims, mlp_ratio, act_layer) if mlp_ratio > 0 else None

    def forward(self, query: Tensor, value: Tensor, ref_pts: Tensor, spatial_shapes: Tensor,
                query_pos: Optional[Tensor] = None, value_padding_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Nq, C); value (B, Nv, C) -> (B, Nq, C)."""
        q = self.norm1(query)
        if self.add_identity:  # the attention adds its identity LN(q); the layer's residual rides along
            query = self.attn(q, value, ref_pts, spatial_shapes, query_pos=query_pos, identity=query + q,
                              value_padding_mask=value_padding_mask)
        else:
            query = query + self.attn(q, value, ref_pts, spatial_shapes, query_pos=query_pos,
                                      value_padding_mask=value_padding_mask)
        if self.ffn is not None:
            query = ffn_residual(self.ffn, self.norm2(query), query)
        return query
