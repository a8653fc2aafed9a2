"""VLScene (Wang et al., AAAI 2025): stereo RepViT+FPN -> camera-aware depth + stereo GWC volume -> fused depth ->
lift-splat of the left context features -> GSSA -> occupancy head; training adds VL distillation, LiDAR depth and
point supervision (spec vlscene.md).

Batch keys (B = batch; official sizes): ``img`` / ``img_right`` (B, 3, 384, 1280) ImageNet-normalised left / right
images (resized to width 1280, bottom 384 rows); ``cam_P2`` / ``cam_P3`` (B, 3, 4) the *original* projections;
``cam_pose`` (B, 4, 4) velodyne -> cam0 (Tr); ``post_rot`` (B, 3, 3) / ``post_tran`` (B, 3) the image resize/crop
(pixel' = post_rot . pixel + post_tran); ``fx_baseline`` (B,) = P2[0, 0] * stereo baseline (original fx).
Training / loss: ``target`` (B, 256, 256, 32) (255 = ignore); optional ``lidar_depth`` (B, H, W) projected LiDAR
depth (0 = none), ``points`` (B, N, 3) / ``point_labels`` (B, N) (0 = ignore) / ``point_mask`` (B, N), and the
teacher outputs ``vl_feat`` (B, 512, H/8, W/8) / ``vl_logits`` (B, 21, H/8, W/8).

Teacher (training only, never part of the state dict): batch ``vl_feat``/``vl_logits`` if present (the vlscene
pipeline reads them from ``data.teacher_cache_root``), else the teacher attached with :meth:`VLScene.set_teacher`,
else the one ``cfg.teacher`` names, built on first use ("cache": ``ssckit cache-teacher`` outputs under
``data.teacher_cache_root``, read by frame id; "lseg": LSeg from local weights; "random": a fixed random stand-in;
"none": no distillation). Helpers (example batch, teacher factory, parameter counts) live in ``vlscene_utils``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.data.labels import get_label_table
from ssckit.errors import SsckitError
from ssckit.losses import depth_bce, kd_feat_loss, kd_logits_loss, lovasz_softmax, ssc_losses
from ssckit.models.backbones.fpn import FPN
from ssckit.models.backbones.repvit import REPVIT_M2_3, REPVIT_M2_3_WIDTHS, RepViTBackbone
from ssckit.models.decoders.gssa import GSSA
from ssckit.models.heads.occ_head import OccHead
from ssckit.models.heads.point_head import PointHead, project_points
from ssckit.models.lifting.depth_fusion import VolumeInteraction
from ssckit.models.lifting.depth_net import DepthNet
from ssckit.models.lifting.lift_splat import LiftSplat
from ssckit.models.lifting.stereo import StereoVolumeNet
from ssckit.models.lifting.vl_distill import VLDistillStudent
from ssckit.models.segmentors.vlscene_utils import (KITTI360_CLASS_WEIGHTS, build_teacher, count_params,
                                                    example_batch)

TEACHERS = ("cache", "lseg", "random", "none")


@dataclass
class VLSceneConfig:
    """All hyper-parameters; defaults are the official SemanticKITTI model."""

    dataset: str = "semantic_kitti"
    num_classes: int = 20
    image_shape: tuple[int, int] = (384, 1280)  # (H, W) network input
    scene_shape: tuple[int, int, int] = (256, 256, 32)  # output grid (X, Y, Z) = target grid
    voxel_size: float = 0.2  # of the output grid, m
    voxel_origin: tuple[float, float, float] = (0.0, -25.6, -2.0)
    lift_scale: int = 2  # lift/GSSA grid = scene_shape / lift_scale (official 128 x 128 x 16, 0.4 m)
    depth_bound: tuple[float, float, float] = (2.0, 58.0, 0.5)  # LSS bins arange(lo, hi, step): 112
    feature_stride: int = 8
    # image encoder
    backbone_widths: tuple[int, ...] = REPVIT_M2_3_WIDTHS
    backbone_depths: tuple[int, ...] = REPVIT_M2_3  # timm depths; (6, 6, 36, 4) = the 58-block variant
    backbone_checkpoint: Optional[str] = None  # ImageNet RepViT weights (timm or official names), loaded at build
    fpn_channels: int = 128
    fpn_num_outs: int = 4
    # depth / context net, stereo, fusion
    depth_channels: int = 128  # DepthNet mid channels
    context_channels: int = 128
    cam_channels: int = 30
    aspp_dropout: float = 0.5
    stereo_channels: int = 64
    stereo_groups: int = 32
    stereo_cost_channels: int = 32
    stereo_hourglasses: int = 3
    fusion_channels: int = 32
    # VL distillation student (train only)
    vl_channels: int = 512
    vl_classes: int = 21
    vl_hidden: int = 256
    # GSSA, head, point head
    gssa_channels: int = 64  # output 4x
    head_channels: int = 128
    head_groups: int = 32
    sdb_depth: int = 2
    point_head: bool = True
    sparse_backend: Optional[str] = None  # None = spconv if importable, else dense
    # teacher (training only)
    teacher: str = "cache"  # cache | lseg | random | none
    teacher_cache_root: Optional[str] = None  # read in the model; prefer data.teacher_cache_root (loader)
    teacher_checkpoint: Optional[str] = None  # LSeg demo_e200.ckpt
    teacher_text_embeddings: Optional[str] = None  # (21, 512) prompt embeddings or CLIP token ids
    # losses (weights as the official config)
    losses: tuple[str, ...] = ("ce_ssc", "sem_scal", "geo_scal")
    class_weights: Optional[tuple[float, ...]] = None  # None: 1 / ln(f + 1e-3) (SemanticKITTI), fixed (KITTI-360)
    depth_weight: float = 1.0
    kd_feat_weight: float = 1.0
    kd_logits_weight: float = 1.0
    point_ce_weight: float = 1.0
    point_lovasz_weight: float = 1.0
    # official quirks (spec §7). Inference-changing: default official. Training-only: default corrected.
    stereo_disparity_sampling: str = "official"  # §7.4 inference; "bin_centres" = sample at the LSS bin centres
    official_ddcm: bool = True  # §7.6 inference
    reuse_indice_pairs: bool = False  # False = spconv 2.x (what the released model ran)
    voxel_index_truncation: bool = True  # lift-splat ``.long()`` truncation toward zero (inference)
    depth_legacy_binning: bool = False  # §7.3 training: True = labels one bin off
    kd_detach_teacher: bool = False  # §7.7 training: as shipped (the spec's recommendation: replicate)
    point_swap_voxel_axes: bool = False  # training: official samples the voxel volume with x and z swapped
    point_uv_right_camera: bool = False  # training: official projects the points with P3 (right) for the image
    lseg_imagenet_input_quirk: bool = False  # §7.2 training (online LSeg only)
    lseg_misaligned_features_quirk: bool = False  # §7.1 training (online LSeg only)

    def __post_init__(self) -> None:
        for f in fields(self):  # configs loaded from YAML / model files carry lists
            if isinstance(getattr(self, f.name), list):
                setattr(self, f.name, tuple(getattr(self, f.name)))

    @property
    def lift_shape(self) -> tuple[int, int, int]:
        return tuple(s // self.lift_scale for s in self.scene_shape)  # type: ignore[return-value]

    @property
    def feature_size(self) -> tuple[int, int]:
        return self.image_shape[0] // self.feature_stride, self.image_shape[1] // self.feature_stride

    def depth_values(self) -> list[float]:
        """Depth of each LSS bin: arange(lo, hi, step) (official 2.0, 2.5, ..., 57.5)."""
        return torch.arange(*self.depth_bound, device="cpu", dtype=torch.float64).tolist()

    @property
    def num_depth_bins(self) -> int:
        return len(self.depth_values())

    def bounds(self) -> list[list[float]]:
        """[lo, hi, step] per axis of the lift grid."""
        step = self.voxel_size * self.lift_scale
        return [[o, o + n * self.voxel_size, step] for o, n in zip(self.voxel_origin, self.scene_shape)]

    def validate(self) -> None:
        h, w = self.feature_size
        problems = []
        if self.image_shape[0] % self.feature_stride or self.image_shape[1] % self.feature_stride:
            problems.append(f"image_shape {self.image_shape} is not a multiple of {self.feature_stride} "
                            "(set data.crop_size to [W, H], e.g. [1280, 384])")
        elif h % 4 or w % 4 or self.num_depth_bins % 4:
            problems.append(f"stride-{self.feature_stride} map {h}x{w} and {self.num_depth_bins} depth bins must be "
                            "multiples of 4 (3-D hourglasses)")
        if any(s % self.lift_scale for s in self.scene_shape):
            problems.append(f"scene_shape {self.scene_shape} is not divisible by lift_scale {self.lift_scale}")
        if self.teacher not in TEACHERS:
            problems.append(f"teacher {self.teacher!r} is not one of {TEACHERS}")
        if self.stereo_disparity_sampling not in ("official", "bin_centres"):
            problems.append(f"stereo_disparity_sampling {self.stereo_disparity_sampling!r}: official | bin_centres")
        if problems:
            raise SsckitError("bad VLScene config: " + "; ".join(problems))


PRESETS: dict[str, dict] = {
    "semantic_kitti": {},
    "kitti_360": {"dataset": "kitti_360", "num_classes": 19, "image_shape": (384, 1408)},
    # tests and demos: small widths; 64 x 256 input, 16 depth bins, 32 x 32 x 4 lift grid (1.6 m)
    "tiny": {"image_shape": (64, 256), "scene_shape": (64, 64, 8), "voxel_size": 0.8, "depth_bound": (2.0, 50.0, 3.0),
             "backbone_widths": (8, 16, 24, 32), "backbone_depths": (1, 1, 1, 1), "fpn_channels": 16,
             "depth_channels": 16, "context_channels": 16, "aspp_dropout": 0.0, "stereo_channels": 16,
             "stereo_groups": 8, "stereo_cost_channels": 8, "stereo_hourglasses": 1, "fusion_channels": 8,
             "vl_channels": 32, "vl_hidden": 16, "gssa_channels": 8, "head_channels": 16, "head_groups": 8,
             "teacher": "random"},
}


def vlscene_config(preset: str = "semantic_kitti", **overrides: Any) -> VLSceneConfig:
    """A preset ("semantic_kitti", "kitti_360", "tiny") with field overrides; unknown fields raise SsckitError."""
    if preset not in PRESETS:
        raise SsckitError(f"unknown VLScene preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = {**PRESETS[preset], **overrides}
    unknown = sorted(set(values) - set(VLSceneConfig.__dataclass_fields__))
    if unknown:
        raise SsckitError(f"unknown VLScene config key(s): {', '.join(unknown)}")
    return VLSceneConfig(**values)


class VLScene(nn.Module):
    """Stereo images -> per-voxel logits (B, C, X, Y, Z); see the module docstring for the batch keys."""

    lr_multipliers: dict[str, float] = {}  # the whole model trains at the base learning rate

    def __init__(self, cfg: VLSceneConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.num_depth_bins
        self.img_backbone = RepViTBackbone(cfg.backbone_widths, cfg.backbone_depths)
        if cfg.backbone_checkpoint:
            self.img_backbone.load_pretrained(cfg.backbone_checkpoint)
        self.img_neck = FPN(cfg.backbone_widths, cfg.fpn_channels, cfg.fpn_num_outs, start_level=1,
                            relu_before_extra_convs=True)
        self.depth_net = DepthNet(cfg.fpn_channels, cfg.depth_channels, cfg.context_channels, d, cfg.cam_channels,
                                  aspp_dropout=cfg.aspp_dropout)
        self.stereo_net = StereoVolumeNet(cfg.fpn_channels, d, cfg.cam_channels, cfg.stereo_channels,
                                          cfg.stereo_groups, cfg.stereo_cost_channels, cfg.stereo_hourglasses,
                                          cfg.stereo_disparity_sampling, cfg.depth_values(), cfg.feature_stride)
        self.depth_fusion = VolumeInteraction(cfg.fusion_channels)
        with torch.device("cpu"):  # geometry constants are computed eagerly (also when building on "meta")
            self.lift = LiftSplat(cfg.image_shape, cfg.feature_stride, *cfg.bounds(), cfg.depth_bound,
                                  cfg.voxel_index_truncation)
        self.vl_distill = VLDistillStudent(cfg.context_channels, cfg.vl_channels, cfg.vl_classes, cfg.vl_hidden,
                                           detach_teacher=cfg.kd_detach_teacher)
        self.gssa = GSSA(cfg.lift_shape, cfg.context_channels, cfg.gssa_channels, cfg.reuse_indice_pairs,
                         cfg.official_ddcm, cfg.sparse_backend)
        self.occ_head = OccHead(self.gssa.out_channels, cfg.num_classes, cfg.head_channels, cfg.head_groups,
                                cfg.sdb_depth)
        self.point_head = None
        if cfg.point_head:
            hi_xyz = [o + n * cfg.voxel_size for o, n in zip(cfg.voxel_origin, cfg.scene_shape)]
            self.point_head = PointHead(self.gssa.out_channels, cfg.fpn_channels, cfg.num_classes,
                                        cfg.voxel_origin, hi_xyz, cfg.point_swap_voxel_axes)
        weights = cfg.class_weights
        if weights is None:
            weights = KITTI360_CLASS_WEIGHTS if cfg.dataset == "kitti_360" else \
                tuple(get_label_table(cfg.dataset).class_weights(eps=1e-3).tolist())
        if len(weights) != cfg.num_classes:
            raise SsckitError(f"{len(weights)} class weights for {cfg.num_classes} classes")
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        self.__dict__["_teacher"] = None  # not a submodule: no state-dict entries, not moved by .to()
        self.__dict__["_teacher_built"] = False

    # --- teacher -----------------------------------------------------------------------------------------------------

    def set_teacher(self, teacher: Optional[nn.Module]) -> None:
        """Use ``teacher`` (a :class:`~ssckit.models.teachers.Teacher`) for distillation; None disables it."""
        self.__dict__["_teacher"] = teacher
        self.__dict__["_teacher_built"] = True

    @property
    def teacher(self) -> Optional[nn.Module]:
        if not self._teacher_built:
            self.set_teacher(build_teacher(self.cfg))
        return self._teacher

    def teacher_outputs(self, batch: dict[str, Any]) -> Optional[tuple[Tensor, Tensor]]:
        """(vl_feat, vl_logits) from the batch, else from the teacher; None when there is no teacher."""
        img = batch["img"]
        if "vl_feat" in batch and "vl_logits" in batch:
            feat, logits = batch["vl_feat"].to(img.device).float(), batch["vl_logits"].to(img.device).float()
        else:
            teacher = self.teacher
            if teacher is None:
                return None
            param = next(teacher.parameters(), None)
            if param is not None and param.device != img.device:
                teacher.to(img.device)
            frames = list(zip(batch["sequence"], batch["frame_id"])) if "sequence" in batch else None
            feat, logits = teacher(img, frames)
        want = (img.shape[0], self.cfg.feature_size)
        if (feat.shape[0], tuple(feat.shape[2:])) != want or feat.shape[1] != self.cfg.vl_channels \
                or tuple(logits.shape) != (want[0], self.cfg.vl_classes, *want[1]):
            raise SsckitError(f"teacher outputs {tuple(feat.shape)} / {tuple(logits.shape)} do not fit the student "
                              f"({self.cfg.vl_channels} + {self.cfg.vl_classes} channels at {want[1]})")
        return feat, logits

    # --- forward -----------------------------------------------------------------------------------------------------

    def cameras(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """LiftSplat camera tensors (N = 1 camera) and the 30-d camera vectors of both views."""
        tr = batch["cam_pose"].float()
        b = tr.shape[0]
        cam2lidar = torch.linalg.inv(tr)
        cams = {"rots": cam2lidar[:, None, :3, :3], "trans": cam2lidar[:, None, :3, 3],
                "post_rots": batch["post_rot"].float()[:, None], "post_trans": batch["post_tran"].float()[:, None],
                "bda": torch.eye(3, device=tr.device).expand(b, 3, 3)}
        left, right = batch["cam_P2"].float()[:, None], batch["cam_P3"].float()[:, None]
        cam_left = self.lift.mlp_input(intrins=left, **cams)  # (B, 1, 30)
        cam_right = self.lift.mlp_input(intrins=right, **cams)
        return {**cams, "intrins": left, "cam_left": cam_left, "cam_right": cam_right}

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """-> ``ssc_logits`` (B, C, X, Y, Z) and ``depth_prob`` (B, D, h, w); in training also the distillation
        tensors (``kd_student``, ``kd_target``, ``kd_seg_logits``, ``kd_teacher_logits``) and ``point_logits``."""
        cfg = self.cfg
        img = batch["img"]
        b = img.shape[0]
        feats = self.img_neck(self.img_backbone(torch.cat([img, batch["img_right"]])))[0]  # (2B, C, h, w)
        left, right = feats[:b], feats[b:]
        cams = self.cameras(batch)
        out = self.depth_net(left, cams["cam_left"])
        d = self.lift.depth_bins
        lss_prob, context = out[:, :d].softmax(dim=1), out[:, d:]
        fx_baseline = batch["fx_baseline"].float()
        if cfg.stereo_disparity_sampling == "bin_centres":  # resized-image fx (spec §7.4 fix)
            fx_baseline = fx_baseline * cams["post_rots"][:, 0, 0, 0]
        stereo_prob = self.stereo_net(left, right, cams["cam_left"], cams["cam_right"], fx_baseline)
        depth_prob = self.depth_fusion(stereo_prob, lss_prob)  # (B, D, h, w)
        volume = self.lift(depth_prob, context, cams["rots"], cams["trans"], cams["intrins"], cams["post_rots"],
                           cams["post_trans"], cams["bda"])  # (B, C, X, Y, Z)
        voxel_feats = self.gssa(volume)
        outputs = {"ssc_logits": self.occ_head(voxel_feats), "depth_prob": depth_prob}
        if not self.training:
            return outputs
        vl = self.teacher_outputs(batch)
        if vl is not None:
            student = self.vl_distill(context, *vl)
            outputs.update(kd_student=context, kd_target=student.target, kd_seg_logits=student.seg_logits,
                           kd_teacher_logits=vl[1])
        if self.point_head is not None and "points" in batch:
            points = batch["points"].float()
            proj = batch["cam_P3" if cfg.point_uv_right_camera else "cam_P2"].float()
            uv, depth = project_points(points, batch["cam_pose"].float(), proj, batch["post_rot"].float(),
                                       batch["post_tran"].float(), cfg.image_shape)
            outputs["point_logits"] = self.point_head(voxel_feats, left, points, uv, depth)
        return outputs

    def loss(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        """SSC losses (CE, sem-SCAL, geo-SCAL) + depth BCE + KD (L1, CE) + point CE/Lovász, each where its inputs
        exist; ``total`` is the weighted sum, the other entries are the detached unweighted terms."""
        cfg = self.cfg
        logits, target = outputs["ssc_logits"], batch["target"].long()
        if logits.shape[2:] != target.shape[1:]:
            logits = F.interpolate(logits, size=target.shape[1:], mode="trilinear", align_corners=False)
        parts = ssc_losses(logits, target, cfg.losses, class_weights=self.class_weights)
        total = parts.pop("total")
        if "lidar_depth" in batch and cfg.depth_weight:
            lo, _, step = cfg.depth_bound
            parts["depth"] = depth_bce(outputs["depth_prob"], batch["lidar_depth"], cfg.feature_stride, lo, step,
                                       cfg.depth_legacy_binning)
            total = total + cfg.depth_weight * parts["depth"]
        if "kd_target" in outputs:
            parts["kd_feat"] = kd_feat_loss(outputs["kd_student"], outputs["kd_target"])
            parts["kd_logits"] = kd_logits_loss(outputs["kd_seg_logits"], outputs["kd_teacher_logits"])
            total = total + cfg.kd_feat_weight * parts["kd_feat"] + cfg.kd_logits_weight * parts["kd_logits"]
        if "point_logits" in outputs:
            labels = batch["point_labels"].long()
            if "point_mask" in batch:
                labels = labels.masked_fill(~batch["point_mask"].bool(), 0)
            keep = labels.reshape(-1) > 0
            point_logits = outputs["point_logits"].reshape(-1, cfg.num_classes)[keep].float()
            point_labels = labels.reshape(-1)[keep]
            if point_labels.numel():
                parts["point_ce"] = F.cross_entropy(point_logits, point_labels)
                parts["point_lovasz"] = lovasz_softmax(point_logits, point_labels, ignore_index=None)
            else:  # no labelled point: zero, but keep the graph connected
                parts["point_ce"] = parts["point_lovasz"] = outputs["point_logits"].sum() * 0.0
            total = total + cfg.point_ce_weight * parts["point_ce"] + cfg.point_lovasz_weight * parts["point_lovasz"]
        return {"total": total, **{k: v.detach() for k, v in parts.items()}}


def build_vlscene(cfg: VLSceneConfig) -> VLScene:
    return VLScene(cfg)


__all__ = ["KITTI360_CLASS_WEIGHTS", "PRESETS", "VLScene", "VLSceneConfig", "build_teacher", "build_vlscene",
           "count_params", "example_batch", "vlscene_config"]
