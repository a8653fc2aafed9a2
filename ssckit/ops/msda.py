"""Multi-scale deformable attention (MSDA): the op with swappable backends, and the mmcv-compatible module.

Conventions (shared by every backend):
- ``value`` (B, Nv, H, D): the per-head values of all levels, concatenated level after level, each level
  flattened row-major (row = y, column = x).
- ``spatial_shapes`` (L, 2) long: (h, w) per level.
- ``sampling_locations`` (B, Nq, H, L, P, 2): normalized (x, y) in [0, 1]; 0 and 1 are the outer pixel *edges*
  (``grid_sample`` with ``align_corners=False``); points outside read zeros.
- ``attention_weights`` (B, Nq, H, L, P): already normalized by the caller.
- result (B, Nq, H*D), heads outermost.

Backends live in a plain dict: ``"torch"`` (``grid_sample``, one call per level, all heads at once) is the
reference; ``"embedding_bag"`` (:mod:`ssckit.ops.msda_bag`) is the CPU fast path (same result up to float
rounding, differentiable); ``"auto"``, the default, picks ``"embedding_bag"`` for CPU tensors and the reference
elsewhere. ``SSCKIT_MSDA_BACKEND`` picks another one at call time, so a fused GPU kernel can be registered with
:func:`register_msda_backend` without touching any model code.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.errors import SsckitError
from ssckit.ops.linear import linear
from ssckit.ops.msda_bag import ms_deform_attn_bag, ms_deform_attn_project_late

MSDABackend = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
ENV_BACKEND = "SSCKIT_MSDA_BACKEND"
DEFAULT_BACKEND = "auto"
LATE_PROJECTION_FACTOR = 8  # a gathered sample row costs about this many value-projection multiply-adds


def ms_deform_attn_torch(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                         attention_weights: Tensor) -> Tensor:
    """Reference MSDA with ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False``)."""
    b, _, n_heads, head_dim = value.shape
    _, n_query, _, n_levels, n_points, _ = sampling_locations.shape
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = values[lvl].permute(0, 2, 3, 1).reshape(b * n_heads, head_dim, h, w)  # (B*H, D, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * n_heads, n_query, n_points, 2)  # (B*H, Nq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*H, D, Nq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(b * n_heads, 1, n_query, n_levels * n_points)
    out = (stacked * weights).sum(-1)  # (B*H, D, Nq)
    return out.view(b, n_heads * head_dim, n_query).transpose(1, 2)  # (B, Nq, H*D)


def ms_deform_attn_auto(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """Automatic choice: the embedding-bag fast path for float32/64 on CPU (3-4x faster there), the reference
    elsewhere (other devices; half precision, where its floating-point index arithmetic would not be exact)."""
    if value.device.type == "cpu" and sampling_locations.dtype in (torch.float32, torch.float64):
        return ms_deform_attn_bag(value, spatial_shapes, sampling_locations, attention_weights)
    return ms_deform_attn_torch(value, spatial_shapes, sampling_locations, attention_weights)


_BACKENDS: dict[str, MSDABackend] = {"torch": ms_deform_attn_torch, "embedding_bag": ms_deform_attn_bag,
                                     "auto": ms_deform_attn_auto}


def register_msda_backend(name: str, fn: MSDABackend) -> None:
    """Register (or replace) an MSDA backend with the signature of :func:`ms_deform_attn_torch`."""
    _BACKENDS[name] = fn


def available_msda_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_msda_backend(name: Optional[str] = None) -> MSDABackend:
    """The backend ``name``, else ``$SSCKIT_MSDA_BACKEND``, else ``"auto"``; a miss lists the valid names."""
    key = name or os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND
    if key not in _BACKENDS:
        raise SsckitError(f"unknown MSDA backend {key!r}; available: {', '.join(available_msda_backends())}")
    return _BACKENDS[key]


def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor,
                   backend: Optional[str] = None) -> Tensor:
    """Multi-scale deformable attention core; (B, Nv, H, D) values -> (B, Nq, H*D). See the module docstring."""
    return get_msda_backend(backend)(value, spatial_shapes, sampling_locations, attention_weights)


class MultiScaleDeformableAttention(nn.Module):
    """Batch-first MSDA with mmcv's parameter names, initialisation and residual.

    ``add_identity=True`` reproduces mmcv's ``dropout(out) + identity`` (identity defaults to the query), which the
    Symphonies layers stack on top of their own residual (spec §6 / §14.1). ``False`` returns ``dropout(out)``.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 dropout: float = 0.1, add_identity: bool = True):
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims {embed_dims} is not divisible by num_heads {num_heads}")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.add_identity = add_identity
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """mmcv init: offset bias = unit head directions (max-norm 1) times the point index 1..P; zero offset
        weights and attention weights; xavier-uniform value/output projections with zero bias."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        dirs = torch.stack([thetas.cos(), thetas.sin()], dim=-1)  # (H, 2)
        dirs = dirs / dirs.abs().max(dim=-1, keepdim=True).values
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = dirs.view(self.num_heads, 1, 1, 2) * scale  # (H, 1, P, 2)
        grid = grid.expand(self.num_heads, self.num_levels, self.num_points, 2)  # (H, L, P, 2)
        self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def value_projection_path(self, value: Tensor, n_query: int) -> str:
        """``"late"`` (sample the raw values, project only the samples: :func:`ms_deform_attn_project_late`) on CPU
        when the bilinear samples are far fewer than the values (a few instance queries over a big volume);
        ``"early"`` (project every value, then the MSDA backend) otherwise, and whenever a backend is forced by
        ``$SSCKIT_MSDA_BACKEND``. Both give the same result up to float rounding."""
        samples = n_query * self.num_heads * self.num_levels * self.num_points * 4
        late = samples * LATE_PROJECTION_FACTOR < value.shape[1] * value.shape[2]
        forced = os.environ.get(ENV_BACKEND, DEFAULT_BACKEND) != DEFAULT_BACKEND
        exact = value.dtype in (torch.float32, torch.float64)
        return "late" if late and value.device.type == "cpu" and exact and not forced else "early"

    def forward(self, query: Tensor, value: Tensor, reference_points: Tensor, spatial_shapes: Tensor,
                level_start_index: Optional[Tensor] = None, query_pos: Optional[Tensor] = None,
                identity: Optional[Tensor] = None, value_padding_mask: Optional[Tensor] = None) -> Tensor:
        """query (B, Nq, C); value (B, Nv, C); reference_points (B, Nq, L, 2) normalized (x, y);
        spatial_shapes (L, 2) (h, w); value_padding_mask (B, Nv) True = padding. ``level_start_index`` is
        accepted for mmcv call compatibility; the levels are split by ``spatial_shapes``. -> (B, Nq, C)."""
        del level_start_index
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        b, n_query, _ = query.shape
        h, lv, p = self.num_heads, self.num_levels, self.num_points
        if reference_points.shape[-1] != 2:
            raise ValueError(f"reference_points must end in (x, y); got shape {tuple(reference_points.shape)}")
        offsets = linear(query, self.sampling_offsets.weight, self.sampling_offsets.bias).view(b, n_query, h, lv, p, 2)
        logits = linear(query, self.attention_weights.weight, self.attention_weights.bias)
        # softmax over the L*P points of each (query, head): computed on the transposed (L*P, B*Nq*H) view, where
        # the kernel vectorizes across rows (several times faster than over a last dim of 8-16); same values
        weights = logits.view(b * n_query * h, lv * p).t().softmax(0).t().view(b, n_query, h, lv, p)
        normalizer = spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (w, h)
        locations = torch.addcdiv(reference_points[:, :, None, :, None, :], offsets,
                                  normalizer[None, None, None, :, None, :])
        if self.value_projection_path(value, n_query) == "late":
            sampled = ms_deform_attn_project_late(value, spatial_shapes, locations, weights, self.value_proj.weight,
                                                  self.value_proj.bias, value_padding_mask)
        else:
            v = linear(value, self.value_proj.weight, self.value_proj.bias)
            if value_padding_mask is not None:
                v = v.masked_fill(value_padding_mask[..., None], 0.0)
            v = v.view(b, v.shape[1], h, self.embed_dims // h)  # (B, Nv, H, D)
            sampled = ms_deform_attn(v, spatial_shapes, locations, weights)
        if self.training and self.dropout.p > 0:
            out = self.dropout(self.output_proj(sampled))
            return out + identity if self.add_identity else out
        return linear(sampled, self.output_proj.weight, self.output_proj.bias,
                      residual=identity if self.add_identity else None)
