"""Symphonies decoder (spec §4-§8): voxel proposal, serial instance-propagated attention layers, ASPP, SSC head.

Conventions (documented once here):
- Decode grid (X, Y, Z) (official 128 x 128 x 8); scene tokens (B, X*Y*Z, C) flattened x-major ((x*Y + y)*Z + z).
  The geometry inputs ``projected_pix`` / ``fov_mask`` come at (X, Y, Z*downsample_z) and are resized in z.
- Image features: L maps (B, C, h_l, w_l); instance queries (B, Q, C) with 2D anchors ``pred_pts`` (B, Q, 2)
  normalized (x, y) = (u/W, v/H).
- 3D references are normalized (x, y, z) by (S - 1) (official, spec §14.6; ``ref_normalize_quirk``); image
  references by (W, H). The squeeze attention's corrected row (``z_offset_quirk=False``) follows whichever
  normalization is in use.
- Batch size > 1 works everywhere: FOV / proposal voxels are gathered per sample with padding
  (:mod:`ssckit.models.layers.token_select`), with no per-sample Python loops.

Official-behaviour flags (defaults reproduce the released model): ``msda_identity`` (mmcv's extra identity in every
deformable attention, §14.1), ``z_offset_quirk`` (squeeze-attention /Z, §14.2), ``stale_scene_values`` (scene
self-attention reads the scene before the cross-attention update, §14.3), ``pix2vox_truncate`` (pixel -> voxel
index = trunc((p - origin)/size - 0.5), §14.4; False: floor((p - origin)/size), the voxel that contains the point)
and ``ref_normalize_quirk`` (3D references i/(S-1), §14.6; False: (i+0.5)/S, the voxel centre under
align_corners=False). Ablation switches drop single attentions or the instance queries; ``lifting`` picks the
2D -> 3D stage: "voxel_proposal" (official), "flosp" (scene tokens = scene_embed + FLoSP features, paper Table 3)
or "none" (scene tokens = scene_embed).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ssckit.data.geometry import pix2vox_torch
from ssckit.models.heads.ssc_head import SSCHead
from ssckit.models.layers.aspp import ASPP3D
from ssckit.models.layers.positional import LearnableSqueezePositionalEncoding
from ssckit.models.layers.token_select import TokenSelection, gather_tokens, scatter_selected_tokens, select_tokens
from ssckit.models.layers.transformer import DeformableTransformerLayer, TransformerLayer
from ssckit.models.lifting.flosp import flosp
from ssckit.models.lifting.voxel_proposal import VoxelProposalLayer, downsample_flat_z, pixel_grid, voxel_hit_mask

LIFTINGS = ("voxel_proposal", "flosp", "none")
OFFICIAL_DERIVED_BUFFERS = ("image_grid", "voxel_grid")  # recomputed here, not loaded
_OFFICIAL_RENAMES = (  # (official prefix, ssckit prefix) after stripping "model." / "decoder."
    ("cls_head.0.", "head.z_up."),
    ("cls_head.1.up_bn.", "head.xyz_up."),
    ("cls_head.2.", "head.classifier."),
)


def official_decoder_key(key: str) -> str:
    """Map an official ``SymphoniesDecoder`` state-dict key (optionally prefixed ``model.`` / ``decoder.``) to
    the key of :class:`SymphoniesDecoder`."""
    for prefix in ("model.", "decoder."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    key = key.replace("query_image_cross_defrom_attn.", "query_image_cross_deform_attn.")
    for old, new in _OFFICIAL_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_official_decoder_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official decoder (or whole-model) state dict -> ours; encoder keys and derived buffers are dropped."""
    if any(k.startswith(("decoder.", "model.decoder.")) for k in state_dict):
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(("decoder.", "model.decoder."))}
    out = {official_decoder_key(k): v for k, v in state_dict.items()}
    return {k: v for k, v in out.items() if k not in OFFICIAL_DERIVED_BUFFERS}


class SymphoniesGeometry(NamedTuple):
    """Per-sample geometry of the decode grid. The discrete parts can be injected (e.g. from an oracle)."""
    fov_mask: Tensor  # (B, N) bool
    ref_pix: Tensor  # (B, N, 2) normalized (x, y) of each voxel's projected centre
    proposal_mask: Tensor  # (B, N) bool: voxels hit by a back-projected pixel
    ref_3d: Optional[Tensor]  # (B, Q, 3) normalized (x, y, z) anchors of the instance queries
    projected_pix: Optional[Tensor] = None  # (B, N, 2) long, after the z resize
    vol_pts: Optional[Tensor] = None  # (B, H*W, 3) float voxel coordinates of every pixel


class SymphoniesLayer(nn.Module):
    """One layer of serial attentions between instance queries Q, image features F and the scene S (spec §6)."""

    def __init__(self, embed_dims: int, num_heads: int = 8, num_levels: int = 3, num_points: int = 4,
                 mlp_ratio: float = 4, dropout: float = 0.1, query_update: bool = True, use_queries: bool = True,
                 query_image_attn: bool = True, scene_query_attn: bool = True, scene_self_attn: bool = True,
                 query_scene_attn: bool = True, query_self_attn: bool = True, msda_identity: bool = True,
                 z_offset_quirk: bool = True, stale_scene_values: bool = True, centred_refs: bool = False):
        super().__init__()
        self.query_update = query_update and use_queries
        self.stale_scene_values = stale_scene_values
        self.query_image_cross_deform_attn = DeformableTransformerLayer(
            embed_dims, num_heads, num_levels, num_points, mlp_ratio, dropout, msda_identity
        ) if use_queries and query_image_attn else None
        self.scene_query_cross_attn = TransformerLayer(
            embed_dims, num_heads, mlp_ratio=0) if use_queries and scene_query_attn else None
        self.scene_self_deform_attn = DeformableTransformerLayer(
            embed_dims, num_heads, 1, num_points * 2, mlp_ratio, dropout, msda_identity, squeeze=True,
            z_offset_quirk=z_offset_quirk, centred_refs=centred_refs) if scene_self_attn else None
        self.query_scene_cross_deform_attn = DeformableTransformerLayer(
            embed_dims, num_heads, 1, num_points * 2, 0, dropout, msda_identity, squeeze=True,
            z_offset_quirk=z_offset_quirk, centred_refs=centred_refs
        ) if self.query_update and query_scene_attn else None
        self.query_self_attn = TransformerLayer(
            embed_dims, num_heads, mlp_ratio=mlp_ratio) if self.query_update and query_self_attn else None

    def forward(self, scene: Tensor, queries: Optional[Tensor], feats: Tensor, feat_shapes: Tensor,
                fov: TokenSelection, ref_vox_fov: Tensor, grid_shape: Tensor, scene_pos: Optional[Tensor] = None,
                ref_2d: Optional[Tensor] = None, ref_3d: Optional[Tensor] = None, pos_fov: Optional[Tensor] = None
                ) -> tuple[Tensor, Optional[Tensor]]:
        """scene (B, N, C); queries (B, Q, C); feats (B, Nf, C) with feat_shapes (L, 2); fov: selected FOV voxels
        (B, M); ref_vox_fov (B, M, 1, 3); grid_shape (1, 3) (X, Y, Z); ref_2d (B, Q, L, 2); ref_3d (B, Q, 1, 3);
        pos_fov (B, M, C): scene_pos at the FOV voxels, gathered here when not given."""
        has_fov = fov.index.shape[1] > 0
        scene_fov = gather_tokens(scene, fov.index)  # (B, M, C)
        if pos_fov is None and scene_pos is not None:
            pos_fov = gather_tokens(scene_pos, fov.index)
        stale = scene
        if queries is not None and self.query_image_cross_deform_attn is not None:
            queries = self.query_image_cross_deform_attn(queries, feats, ref_2d, feat_shapes)
        if has_fov and queries is not None and self.scene_query_cross_attn is not None:
            scene_fov = self.scene_query_cross_attn(scene_fov, queries, queries, query_pos=pos_fov)
        if has_fov and self.scene_self_deform_attn is not None:
            value = stale if self.stale_scene_values else scatter_selected_tokens(scene, scene_fov, fov)
            scene_fov = self.scene_self_deform_attn(scene_fov, value, ref_vox_fov, grid_shape, query_pos=pos_fov)
        scene = scatter_selected_tokens(scene, scene_fov, fov)
        if self.query_update and queries is not None:
            if self.query_scene_cross_deform_attn is not None:
                queries = self.query_scene_cross_deform_attn(queries, scene, ref_3d, grid_shape)
            if self.query_self_attn is not None:
                queries = self.query_self_attn(queries)
        return scene, queries


class SymphoniesDecoder(nn.Module):
    """Scene decoder of Symphonies; official defaults (SemanticKITTI, 128 x 128 x 8 grid, 0.4 m voxels)."""

    def __init__(self, embed_dims: int = 128, num_classes: int = 20, grid_shape: Sequence[int] = (128, 128, 8),
                 image_shape: Sequence[int] = (370, 1220), voxel_size: float = 0.4, downsample_z: int = 2,
                 num_layers: int = 3, num_heads: int = 8, num_levels: int = 3, num_points: int = 4,
                 mlp_ratio: float = 4, dropout: float = 0.1, pe_squeeze_dims: Sequence[int] = (2, 2, 1),
                 aspp_dilations: Sequence[int] = (1, 3), head_xyz_upsample: bool = True,
                 msda_identity: bool = True, z_offset_quirk: bool = True, stale_scene_values: bool = True,
                 pix2vox_truncate: bool = True, ref_normalize_quirk: bool = True, use_instance_queries: bool = True,
                 lifting: str = "voxel_proposal", query_image_attn: bool = True, scene_query_attn: bool = True,
                 scene_self_attn: bool = True, query_scene_attn: bool = True, query_self_attn: bool = True,
                 force_fp32: bool = True):
        super().__init__()
        if lifting not in LIFTINGS:
            raise ValueError(f"unknown lifting {lifting!r}; choose one of {LIFTINGS}")
        self.lifting = lifting
        self.pix2vox_truncate = pix2vox_truncate
        self.ref_normalize_quirk = ref_normalize_quirk
        self.grid_shape = tuple(int(s) for s in grid_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.voxel_size = float(voxel_size)
        self.downsample_z = int(downsample_z)
        self.num_levels = num_levels
        self.use_instance_queries = use_instance_queries
        self.force_fp32 = force_fp32
        sx, sy, sz = self.grid_shape
        fold = pe_squeeze_dims[0] * pe_squeeze_dims[1] * pe_squeeze_dims[2]
        if sz % fold:
            raise ValueError(f"grid z size {sz} is not divisible by the PE squeeze product {fold}")

        self.scene_embed = nn.Embedding(sx * sy * sz, embed_dims)
        self.scene_pos = LearnableSqueezePositionalEncoding((sx, sy, sz // fold), embed_dims, tuple(pe_squeeze_dims))
        self.voxel_proposal = VoxelProposalLayer(embed_dims, num_heads, num_levels, num_points, mlp_ratio, dropout,
                                                 msda_identity) if lifting == "voxel_proposal" else None
        self.layers = nn.ModuleList([
            SymphoniesLayer(embed_dims, num_heads, num_levels, num_points, mlp_ratio, dropout,
                            query_update=i != num_layers - 1, use_queries=use_instance_queries,
                            query_image_attn=query_image_attn, scene_query_attn=scene_query_attn,
                            scene_self_attn=scene_self_attn, query_scene_attn=query_scene_attn,
                            query_self_attn=query_self_attn, msda_identity=msda_identity,
                            z_offset_quirk=z_offset_quirk, stale_scene_values=stale_scene_values,
                            centred_refs=not ref_normalize_quirk)
            for i in range(num_layers)
        ])
        self.aspp = ASPP3D(embed_dims, aspp_dilations)
        self.head = SSCHead(embed_dims, num_classes, self.downsample_z, head_xyz_upsample)

        # (2, H, W) pixel (u, v): the official buffer, kept for parity checks (pix2vox_torch builds its own grid)
        self.register_buffer("image_grid", pixel_grid(self.image_shape), persistent=False)
        axes = [self._normalize_index(torch.arange(s, dtype=torch.float32), s) for s in self.grid_shape]
        ref = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3) x-major
        self.register_buffer("voxel_ref", ref, persistent=False)

    def _normalize_index(self, idx: Tensor, size: Tensor | int) -> Tensor:
        """Voxel index -> normalized reference: i/(S-1) (official, §14.6) or (i+0.5)/S."""
        if self.ref_normalize_quirk:
            return idx / (size - 1).clamp(min=1) if isinstance(size, Tensor) else idx / max(size - 1, 1)
        return (idx + 0.5) / size

    # ---------------------------------------------------------------- geometry
    def compute_geometry(self, depth: Tensor, cam_k: Tensor, cam_pose: Tensor, voxel_origin: Tensor,
                         projected_pix: Tensor, fov_mask: Tensor, pred_pts: Optional[Tensor] = None
                         ) -> SymphoniesGeometry:
        """depth (B, H, W) m; cam_k (B, 3, 3); cam_pose (B, 4, 4) velo->cam; voxel_origin (B, 3) m;
        projected_pix (B, N', 2) long (u, v) and fov_mask (B, N') bool at (X, Y, Z*downsample_z)."""
        sx, sy, sz = self.grid_shape
        h, w = self.image_shape
        if self.downsample_z != 1:
            src = (sx, sy, sz * self.downsample_z)
            projected_pix = downsample_flat_z(projected_pix, src, self.grid_shape)
            fov_mask = downsample_flat_z(fov_mask, src, self.grid_shape)
        ref_pix = (projected_pix.float() + 0.5) / projected_pix.new_tensor([w, h], dtype=torch.float32)
        offset = 0.5 if self.pix2vox_truncate else 0.0
        vol_pts = pix2vox_torch(depth.float(), cam_k.float(), cam_pose.float(), self.voxel_size,
                                voxel_origin.float(), offset=offset, downsample_z=self.downsample_z,
                                rounding=None)  # (B, H*W, 3)
        # official (§14.4): trunc(p/size - 0.5) keeps indices in (-1, 0) as 0; else the containing voxel
        vox_idx = vol_pts.long() if self.pix2vox_truncate else vol_pts.floor().long()
        proposal_mask = voxel_hit_mask(vox_idx, self.grid_shape)
        ref_3d = None
        if pred_pts is not None:
            pix = (pred_pts * pred_pts.new_tensor([w, h])).long()  # (B, Q, 2)
            flat = pix[..., 1].clamp(0, h - 1) * w + pix[..., 0].clamp(0, w - 1)
            anchor = vox_idx.gather(1, flat[..., None].expand(-1, -1, 3)).float()  # (B, Q, 3)
            ref_3d = self._normalize_index(anchor, anchor.new_tensor(self.grid_shape)).clamp(0, 1)
        return SymphoniesGeometry(fov_mask, ref_pix, proposal_mask, ref_3d, projected_pix, vol_pts)

    # ---------------------------------------------------------------- forward
    def forward(self, feats: Sequence[Tensor], queries: Optional[Tensor], pred_pts: Optional[Tensor],
                depth: Tensor, cam_k: Tensor, cam_pose: Tensor, voxel_origin: Tensor, projected_pix: Tensor,
                fov_mask: Tensor, geometry: Optional[SymphoniesGeometry] = None) -> list[Tensor]:
        """-> logits (B, num_classes, X', Y', Z') of every layer in training, of the last layer in eval."""
        return self.forward_with_intermediates(feats, queries, pred_pts, depth, cam_k, cam_pose, voxel_origin,
                                               projected_pix, fov_mask, geometry, record=False)[0]

    def forward_with_intermediates(self, feats: Sequence[Tensor], queries: Optional[Tensor],
                                   pred_pts: Optional[Tensor], depth: Tensor, cam_k: Tensor, cam_pose: Tensor,
                                   voxel_origin: Tensor, projected_pix: Tensor, fov_mask: Tensor,
                                   geometry: Optional[SymphoniesGeometry] = None, record: bool = True
                                   ) -> tuple[list[Tensor], dict]:
        """As :meth:`forward`, plus (when ``record``) the scene volumes (B, C, X, Y, Z) after the proposal and
        after every layer (before ASPP), the queries after every layer and the geometry."""
        if self.force_fp32:
            with torch.autocast(device_type=depth.device.type, enabled=False):
                feats = [f.float() for f in feats]
                queries = queries.float() if queries is not None else None
                pred_pts = pred_pts.float() if pred_pts is not None else None
                return self._run(feats, queries, pred_pts, depth, cam_k, cam_pose, voxel_origin, projected_pix,
                                 fov_mask, geometry, record)
        return self._run(feats, queries, pred_pts, depth, cam_k, cam_pose, voxel_origin, projected_pix, fov_mask,
                         geometry, record)

    def _to_volume(self, tokens: Tensor) -> Tensor:
        """(B, N, C) x-major tokens -> (B, C, X, Y, Z), a channels_last_3d view (no copy) of contiguous tokens."""
        return tokens.reshape(tokens.shape[0], *self.grid_shape, tokens.shape[2]).permute(0, 4, 1, 2, 3)

    def _run(self, feats, queries, pred_pts, depth, cam_k, cam_pose, voxel_origin, projected_pix, fov_mask,
             geometry, record):
        if not self.use_instance_queries:
            queries = pred_pts = None
        elif queries is None or pred_pts is None:
            raise ValueError("this decoder uses instance queries: pass queries and pred_pts")
        if len(feats) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(feats)}")
        if geometry is None:
            geometry = self.compute_geometry(depth, cam_k, cam_pose, voxel_origin, projected_pix, fov_mask,
                                             pred_pts)
        b = feats[0].shape[0]
        feat_flat = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], dim=1)  # (B, sum h*w, C)
        feat_shapes = torch.tensor([f.shape[-2:] for f in feats], dtype=torch.long, device=feat_flat.device)
        grid_shape = torch.tensor([self.grid_shape], dtype=torch.long, device=feat_flat.device)  # (1, 3)

        scene = self.scene_embed.weight.unsqueeze(0).expand(b, -1, -1)  # (B, N, C)
        scene_pos = self.scene_pos().expand(b, -1, -1)
        if self.lifting == "flosp":
            scene = scene + flosp(feats, geometry.ref_pix, geometry.fov_mask)
        elif self.voxel_proposal is not None:
            scene = self.voxel_proposal(scene, feat_flat, feat_shapes, geometry.proposal_mask, geometry.ref_pix,
                                        scene_pos)
        fov = select_tokens(geometry.fov_mask)
        ref_vox_fov = self.voxel_ref[fov.index][:, :, None, :]  # (B, M, 1, 3)
        pos_fov = gather_tokens(scene_pos, fov.index)  # (B, M, C), the same for every layer
        ref_2d = pred_pts[:, :, None, :].expand(-1, -1, len(feats), -1) if pred_pts is not None else None
        ref_3d = geometry.ref_3d[:, :, None, :] if queries is not None else None

        inter: dict = {"geometry": geometry, "scene_after_layer": [], "queries_after_layer": []}
        if record:
            inter["scene_after_vpl"] = self._to_volume(scene)
        outs = []
        for i, layer in enumerate(self.layers):
            scene, queries = layer(scene, queries, feat_flat, feat_shapes, fov, ref_vox_fov, grid_shape, scene_pos,
                                   ref_2d, ref_3d, pos_fov)
            volume = self._to_volume(scene)
            if record:
                inter["scene_after_layer"].append(volume)
                inter["queries_after_layer"].append(queries)
            last = i == len(self.layers) - 1
            if last:
                volume = self.aspp(volume)
            if self.training or last:
                outs.append(self.head(volume))
        return outs, inter
