"""VLScene helpers outside the model wiring: fixed constants, the teacher factory and a synthetic example batch."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn

from ssckit.errors import SsckitError

if TYPE_CHECKING:
    from ssckit.models.segmentors.vlscene import VLSceneConfig

# SSCBench-KITTI-360 OccHead class weights (official occhead.py, fixed list instead of 1 / ln(f))
KITTI360_CLASS_WEIGHTS = (0.464, 0.595, 0.865, 0.871, 0.717, 0.657, 0.852, 0.541, 0.602, 0.567, 0.607, 0.540,
                          0.636, 0.513, 0.564, 0.701, 0.774, 0.580, 0.690)
# KITTI odometry sequence 00: original P2 / P3 (1241 x 376 images); Tr as in the Symphonies example batch.
KITTI_P2 = ((718.856, 0.0, 607.1928, 45.38225), (0.0, 718.856, 185.2157, -0.1130887), (0.0, 0.0, 1.0, 0.003779761))
KITTI_P3 = ((718.856, 0.0, 607.1928, -337.2877), (0.0, 718.856, 185.2157, 2.369057), (0.0, 0.0, 1.0, 0.004915215))
KITTI_SIZE = (1241, 376)
TRAIN_ONLY = ("vl_distill", "point_head")  # VLScene children absent from the inference path


def build_teacher(cfg: VLSceneConfig) -> Optional[nn.Module]:
    """The teacher ``cfg.teacher`` names (built lazily by the model at its first training step without batch
    ``vl_feat`` / ``vl_logits``)."""
    from ssckit.models.teachers import CachedTeacher, LSegTeacher, RandomTeacher

    size = cfg.feature_size
    if cfg.teacher == "none":
        return None
    if cfg.teacher == "random":
        return RandomTeacher(size, cfg.vl_channels, cfg.vl_classes, seed=0)
    if cfg.teacher == "cache":
        if not cfg.teacher_cache_root:
            raise SsckitError("VLScene distillation needs teacher outputs: pass the `ssckit cache-teacher` folder as "
                              "data.teacher_cache_root=DIR (or SSCKIT_TEACHER_CACHE_ROOT; read by the data loader) "
                              "or model.teacher_cache_root=DIR, or set model.teacher=lseg with "
                              "model.teacher_checkpoint and model.teacher_text_embeddings, or model.teacher=none "
                              "(no distillation)")
        return CachedTeacher(cfg.teacher_cache_root, size, cfg.vl_channels, cfg.vl_classes)
    if not (cfg.teacher_checkpoint and cfg.teacher_text_embeddings):
        raise SsckitError("model.teacher=lseg needs model.teacher_checkpoint (demo_e200.ckpt) and "
                          "model.teacher_text_embeddings (never downloaded)")
    return LSegTeacher.from_checkpoint(cfg.teacher_checkpoint, cfg.teacher_text_embeddings, size,
                                       imagenet_input_quirk=cfg.lseg_imagenet_input_quirk,
                                       misaligned_features_quirk=cfg.lseg_misaligned_features_quirk)


def example_batch(cfg: VLSceneConfig, batch_size: int = 1, seed: int = 0,
                  device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """A random but geometrically valid stereo batch (seq-00 calibration, the VLScene resize/crop of a 1241 x 376
    image, cached-teacher outputs, LiDAR depth and labelled points): for tests, benchmarks and FLOP counts."""
    from ssckit.models.segmentors.symphonies import KITTI_TR

    g = torch.Generator().manual_seed(seed)
    b, (h, w), (fh, fw) = batch_size, cfg.image_shape, cfg.feature_size
    scale = w / KITTI_SIZE[0]
    top = int(KITTI_SIZE[1] * scale) - h  # bottom h rows kept
    post_rot = torch.diag(torch.tensor([scale, scale, 1.0]))
    post_tran = torch.tensor([0.0, -float(top), 0.0])
    p2, p3 = torch.tensor(KITTI_P2), torch.tensor(KITTI_P3)
    baseline = p3[0, 3] / -p3[0, 0] - p2[0, 3] / -p2[0, 0]
    target = torch.randint(0, cfg.num_classes, (b, *cfg.scene_shape), generator=g, dtype=torch.uint8)
    target[torch.rand(target.shape, generator=g) < 0.6] = 0
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    lidar = cfg.depth_bound[0] + (cfg.depth_bound[1] - cfg.depth_bound[0]) * torch.rand(b, h, w, generator=g)
    lidar[torch.rand(b, h, w, generator=g) > 0.05] = 0.0  # ~5 % of the pixels have a LiDAR return
    n = int(2.5 * fh * fw)
    lo, size = torch.tensor(cfg.voxel_origin), torch.tensor(cfg.scene_shape) * cfg.voxel_size
    batch = {
        "img": torch.randn(b, 3, h, w, generator=g), "img_right": torch.randn(b, 3, h, w, generator=g),
        "cam_P2": p2.expand(b, 3, 4).clone(), "cam_P3": p3.expand(b, 3, 4).clone(),
        "cam_pose": torch.tensor(KITTI_TR, dtype=torch.float32).expand(b, 4, 4).clone(),
        "post_rot": post_rot.expand(b, 3, 3).clone(), "post_tran": post_tran.expand(b, 3).clone(),
        "fx_baseline": (p2[0, 0] * baseline).expand(b).clone(),
        "target": target, "lidar_depth": lidar,
        "points": lo + size * torch.rand(b, n, 3, generator=g),
        "point_labels": torch.randint(0, cfg.num_classes, (b, n), generator=g),
        "point_mask": torch.rand(b, n, generator=g) < 0.9,
        "vl_feat": torch.randn(b, cfg.vl_channels, fh, fw, generator=g),
        "vl_logits": torch.randn(b, cfg.vl_classes, fh, fw, generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


def count_params(model: nn.Module) -> dict[str, int]:
    """``params``: the inference model (teacher, train-only heads and geometry constants excluded; official
    44,680,430); ``params_train_only``: VL-distillation student + point head; ``params_trainable``: all learnable."""
    train_only = sum(p.numel() for name in TRAIN_ONLY if getattr(model, name, None) is not None
                     for p in getattr(model, name).parameters())
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total - train_only, "params_train_only": train_only, "params_trainable": trainable}


__all__ = ["KITTI360_CLASS_WEIGHTS", "KITTI_P2", "KITTI_P3", "KITTI_SIZE", "TRAIN_ONLY", "build_teacher",
           "count_params", "example_batch"]
