"""Symphonies (Jiang et al., CVPR 2024): wiring of encoder, decoder and losses.

Batch keys (B = batch; SemanticKITTI sizes): ``img`` (B, 3, 370, 1220) ImageNet-normalised; ``depth`` (B, 370, 1220)
stereo depth in m; ``cam_K`` (B, 3, 3) = P2[:3, :3]; ``cam_pose`` (B, 4, 4) velodyne -> camera (Tr);
``projected_pix_2`` (B, N2, 2) long and ``fov_mask_2`` (B, N2) bool for the voxel centres of the 2x-downsampled grid
(128 x 128 x 16, x-major); for the loss also ``target`` (B, 256, 256, 32) uint8/long (255 = ignore) and ``tile_ids``
(B, 256, 256, 32) long (local-frustum tile per voxel, -1 = none). Optional ``voxel_origin`` (B, 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssckit.data.geometry import frustum_tile_ids_torch, vox2pix_torch
from ssckit.data.labels import get_label_table
from ssckit.errors import SsckitError
from ssckit.losses import ssc_losses
from ssckit.models.backbones.symphonies_encoder import SymphoniesEncoder
from ssckit.models.decoders.symphonies import LIFTINGS, SymphoniesDecoder

# KITTI odometry sequences 00-02: P2[:3, :3] and Tr (velodyne -> cam0); used for example batches only.
KITTI_K = ((718.856, 0.0, 607.1928), (0.0, 718.856, 185.2157), (0.0, 0.0, 1.0))
KITTI_TR = ((4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02),
            (-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02),
            (9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01),
            (0.0, 0.0, 0.0, 1.0))


@dataclass
class SymphoniesConfig:
    """All hyper-parameters; defaults are the official SemanticKITTI model (spec symphonies.md)."""

    dataset: str = "semantic_kitti"
    num_classes: int = 20
    image_shape: tuple[int, int] = (370, 1220)  # (H, W) of the input crop
    scene_shape: tuple[int, int, int] = (256, 256, 32)  # output grid (X, Y, Z)
    voxel_size: float = 0.2  # of the output grid, m
    voxel_origin: tuple[float, float, float] = (0.0, -25.6, -2.0)
    volume_scale: int = 2  # decode grid = scene_shape / volume_scale, then z / downsample_z
    downsample_z: int = 2
    embed_dims: int = 128
    num_queries: int = 100
    num_layers: int = 3
    num_heads: int = 8
    num_points: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    pe_squeeze_dims: tuple[int, int, int] = (2, 2, 1)
    aspp_dilations: tuple[int, ...] = (1, 3)
    # image encoder (ResNet-50 + MaskDINO pixel decoder)
    encoder_width: int = 64
    encoder_embed_dims: int = 256
    encoder_heads: int = 8
    encoder_layers: int = 6
    encoder_ffn_dims: int = 2048
    encoder_groups: int = 32
    pretrained_encoder: bool = False  # ablation: load `encoder_checkpoint` (MaskDINO / ImageNet R50 / Symphonies)
    encoder_checkpoint: str | None = None
    build_unused: bool = False  # build the pixel decoder's never-used FPN step (exact 59,310,044 params)
    # official quirks (spec §14): True reproduces the released checkpoints
    msda_identity: bool = True
    z_offset_quirk: bool = True
    stale_scene_values: bool = True
    pix2vox_truncate: bool = True  # §14.4: trunc((p - origin)/size - 0.5); False: floor((p - origin)/size)
    ref_normalize_quirk: bool = True  # §14.6: 3D references i/(S-1); False: (i+0.5)/S (align_corners=False)
    # ablations (paper Tables 3-6). Mono vs stereo depth (Table 5) is a data choice: the dataset's depth_root
    # selects which depth maps feed the voxel proposal; nothing changes in the model.
    lifting: str = "voxel_proposal"  # 2D -> 3D: "voxel_proposal" (official) | "flosp" (Table 3) | "none"
    use_instance_queries: bool = True
    query_image_attn: bool = True
    scene_query_attn: bool = True
    scene_self_attn: bool = True
    query_scene_attn: bool = True
    query_self_attn: bool = True
    # losses
    losses: tuple[str, ...] = ("ce_ssc", "sem_scal", "geo_scal", "frustum")
    aux_weights: tuple[float, ...] = (0.5, 0.5, 1.0)  # per decoder layer output, last = main
    frustum_size: int = 8  # MonoScene: an 8 x 8 grid of image tiles
    class_weights: tuple[float, ...] | None = None  # None = 1 / ln(f + 1e-6) from the dataset's frequencies

    @property
    def decode_shape(self) -> tuple[int, int, int]:
        x, y, z = (s // self.volume_scale for s in self.scene_shape)
        return x, y, z // self.downsample_z

    @property
    def projection_grid(self) -> tuple[int, int, int]:
        """Grid of ``projected_pix_2`` / ``fov_mask_2``: scene_shape / volume_scale."""
        return tuple(s // self.volume_scale for s in self.scene_shape)


PRESETS: dict[str, dict] = {
    "semantic_kitti": {},
    "kitti_360": {"dataset": "kitti_360", "num_classes": 19, "image_shape": (376, 1408)},
    # tests and demos: tiny widths, 1.6 m voxels over the same 51.2 m extent in x/y
    "tiny": {"image_shape": (74, 244), "scene_shape": (32, 32, 16), "voxel_size": 1.6, "embed_dims": 32,
             "num_queries": 16, "num_heads": 4, "encoder_width": 8, "encoder_embed_dims": 32, "encoder_heads": 4,
             "encoder_layers": 1, "encoder_ffn_dims": 64, "encoder_groups": 8, "dropout": 0.0},
}


def symphonies_config(preset: str = "semantic_kitti", **overrides) -> SymphoniesConfig:
    """A preset ("semantic_kitti", "kitti_360", "tiny") with field overrides; unknown fields raise SsckitError."""
    if preset not in PRESETS:
        raise SsckitError(f"unknown Symphonies preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **overrides}
    unknown = sorted(set(values) - set(SymphoniesConfig.__dataclass_fields__))
    if unknown:
        raise SsckitError(f"unknown Symphonies config key(s): {', '.join(unknown)}")
    return SymphoniesConfig(**values)


class Symphonies(nn.Module):
    """Image -> 3 feature levels + instance queries (encoder) -> scene decoder -> per-voxel logits."""

    def __init__(self, cfg: SymphoniesConfig):
        super().__init__()
        self.cfg = cfg
        if len(cfg.aux_weights) != cfg.num_layers:
            raise SsckitError(f"aux_weights has {len(cfg.aux_weights)} entries for {cfg.num_layers} layers")
        if cfg.lifting not in LIFTINGS:
            raise SsckitError(f"unknown Symphonies lifting {cfg.lifting!r}; choose one of {', '.join(LIFTINGS)}")
        self.encoder = SymphoniesEncoder(
            base_width=cfg.encoder_width, embed_dims=cfg.encoder_embed_dims, num_heads=cfg.encoder_heads,
            num_points=cfg.num_points, num_layers=cfg.encoder_layers, ffn_dims=cfg.encoder_ffn_dims, dropout=0.0,
            num_groups=cfg.encoder_groups, out_dims=cfg.embed_dims, num_queries=cfg.num_queries,
            build_unused=cfg.build_unused, pretrained_encoder=cfg.pretrained_encoder,
            checkpoint=cfg.encoder_checkpoint, use_queries=cfg.use_instance_queries)
        self.decoder = SymphoniesDecoder(
            embed_dims=cfg.embed_dims, num_classes=cfg.num_classes, grid_shape=cfg.decode_shape,
            image_shape=cfg.image_shape, voxel_size=cfg.voxel_size * cfg.volume_scale,
            downsample_z=cfg.downsample_z, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            num_levels=len(self.encoder.strides), num_points=cfg.num_points, mlp_ratio=cfg.mlp_ratio,
            dropout=cfg.dropout, pe_squeeze_dims=cfg.pe_squeeze_dims, aspp_dilations=cfg.aspp_dilations,
            msda_identity=cfg.msda_identity, z_offset_quirk=cfg.z_offset_quirk,
            stale_scene_values=cfg.stale_scene_values, use_instance_queries=cfg.use_instance_queries,
            pix2vox_truncate=cfg.pix2vox_truncate, ref_normalize_quirk=cfg.ref_normalize_quirk,
            lifting=cfg.lifting, query_image_attn=cfg.query_image_attn,
            scene_query_attn=cfg.scene_query_attn, scene_self_attn=cfg.scene_self_attn,
            query_scene_attn=cfg.query_scene_attn, query_self_attn=cfg.query_self_attn)
        weights = cfg.class_weights or tuple(get_label_table(cfg.dataset).class_weights().tolist())
        if len(weights) != cfg.num_classes:
            raise SsckitError(f"{len(weights)} class weights for {cfg.num_classes} classes")
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.register_buffer("voxel_origin", torch.tensor(cfg.voxel_origin, dtype=torch.float32), persistent=False)

    # Parameter-name prefixes trained at 0.1x the base learning rate (official: `encoder.model`).
    lr_multipliers: dict[str, float] = {"encoder.backbone.": 0.1, "encoder.pixel_decoder.": 0.1}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor | list[Tensor]]:
        """-> ``ssc_logits`` (B, C, X, Y, Z) of the last layer, and in training ``aux_logits`` (all layers)."""
        enc = self.encoder(batch["img"])
        b = batch["img"].shape[0]
        origin = batch.get("voxel_origin", self.voxel_origin.expand(b, 3))
        logits = self.decoder(enc.feats, enc.queries, enc.pred_pts, batch["depth"], batch["cam_K"],
                              batch["cam_pose"], origin, batch["projected_pix_2"], batch["fov_mask_2"])
        out: dict[str, Tensor | list[Tensor]] = {"ssc_logits": logits[-1]}
        if self.training:
            out["aux_logits"] = logits
        return out

    def loss(self, outputs: dict, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Official deep supervision: every layer's logits get the same losses, weighted 0.5 / 0.5 / 1.0."""
        logits_list = outputs.get("aux_logits") or [outputs["ssc_logits"]]
        weights = self.cfg.aux_weights[-len(logits_list):]
        num_tiles = self.cfg.frustum_size ** 2
        total = torch.zeros((), device=batch["target"].device)
        terms: dict[str, Tensor] = {}
        for i, (logits, w) in enumerate(zip(logits_list, weights)):
            parts = ssc_losses(logits, batch["target"].long(), self.cfg.losses, class_weights=self.class_weights,
                               tile_ids=batch.get("tile_ids"), num_tiles=num_tiles)
            total = total + w * parts.pop("total")
            suffix = "" if i == len(logits_list) - 1 else f"_{i}"
            terms.update({f"{k}{suffix}": v.detach() for k, v in parts.items()})
        return {"total": total, **terms}


def build_symphonies(cfg: SymphoniesConfig) -> Symphonies:
    return Symphonies(cfg)


def example_batch(cfg: SymphoniesConfig, batch_size: int = 1, seed: int = 0,
                  device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """A random but geometrically valid batch (KITTI seq-00 calibration scaled to the image size): for tests,
    benchmarks and FLOP counts."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_shape
    k = torch.tensor(KITTI_K, dtype=torch.float64)
    k[0] *= w / 1220.0
    k[1] *= h / 370.0
    cam_k = k.expand(batch_size, 3, 3).clone()
    cam_pose = torch.tensor(KITTI_TR, dtype=torch.float64).expand(batch_size, 4, 4).clone()
    pix2, fov2, _ = vox2pix_torch(cam_pose, cam_k, (w, h), cfg.projection_grid, cfg.voxel_size * cfg.volume_scale,
                                  cfg.voxel_origin)
    pix1, _, z1 = vox2pix_torch(cam_pose, cam_k, (w, h), cfg.scene_shape, cfg.voxel_size, cfg.voxel_origin)
    target = torch.randint(0, cfg.num_classes, (batch_size, *cfg.scene_shape), generator=g, dtype=torch.uint8)
    target[torch.rand(target.shape, generator=g) < 0.6] = 0
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    tile_ids, _ = frustum_tile_ids_torch(pix1, z1, (w, h), cfg.frustum_size, target)
    batch = {
        "img": torch.randn(batch_size, 3, h, w, generator=g),
        "depth": 2.0 + 50.0 * torch.rand(batch_size, h, w, generator=g),
        "cam_K": cam_k.float(), "cam_pose": cam_pose.float(),
        "projected_pix_2": pix2, "fov_mask_2": fov2,
        "target": target, "tile_ids": tile_ids.view(batch_size, *cfg.scene_shape),
    }
    return {k: v.to(device) for k, v in batch.items()}


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters as the paper counts them (frozen BN affine included) and the trainable ones."""
    from ssckit.models.backbones.resnet import count_parameters

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": count_parameters(model, include_frozen_bn=True), "params_trainable": trainable}
