"""Shared by the engine tests and the DDP subprocess script: a tiny registered model, engine CLI commands and a
tiny SemanticKITTI-layout dataset (full 256x256x32 voxel files, small images)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch import nn

import ssckit  # noqa: F401  (torchvision shim first)
from ssckit.data import io
from ssckit.data.geometry import FULL_GRID
from ssckit.data.preprocess import downsample_labels
from ssckit.losses.ssc import ce_ssc, frustum_proportion

ENGINE_COMMANDS = {"train": "ssckit.commands.train", "eval": "ssckit.commands.eval",
                   "predict": "ssckit.commands.predict"}
KITTI_K = np.array([[718.856, 0.0, 607.1928], [0.0, 718.856, 185.2157], [0.0, 0.0, 1.0]])
KITTI_TR = np.array([[4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02],
                     [-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02],
                     [9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01],
                     [0.0, 0.0, 0.0, 1.0]])
IMAGE_SIZE = (155, 47)  # (W, H) written; the tests crop (152, 46)
CROP = (152, 46)


@dataclass
class TinyConfig:
    num_classes: int = 20
    scene_shape: Tuple[int, int, int] = (32, 32, 4)
    image_shape: Tuple[int, int] = (46, 152)
    hidden: int = 8
    dropout: float = 0.2
    frustum_size: int = 8
    nan_loss: bool = False  # tests: make the loss NaN


class TinyModel(nn.Module):
    """Image conv -> pooled feature -> per-class bias added to a learnable voxel logit grid."""

    lr_multipliers = {"encoder.": 0.1}

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Sequential(nn.Conv2d(3, cfg.hidden, 3, stride=2, padding=1), nn.BatchNorm2d(cfg.hidden),
                                     nn.ReLU())
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)
        self.voxels = nn.Parameter(0.01 * torch.randn(cfg.num_classes, *cfg.scene_shape))

    def forward(self, batch: dict) -> dict:
        feat = self.encoder(batch["img"]).mean(dim=(2, 3))  # (B, hidden)
        bias = self.head(self.drop(feat))  # (B, C)
        return {"ssc_logits": self.voxels[None] + bias[:, :, None, None, None]}

    def loss(self, outputs: dict, batch: dict) -> dict:
        logits, target = outputs["ssc_logits"], batch["target"].long()
        ce = ce_ssc(logits, target)
        fp = frustum_proportion(logits, target, batch["tile_ids"], int(batch["num_tiles"][0]))
        total = ce + 0.1 * fp
        if self.cfg.nan_loss:
            total = total * float("nan")
        return {"total": total, "ce_ssc": ce.detach(), "frustum": fp.detach()}


def tiny_preset(name: str | None = None, **overrides) -> TinyConfig:
    return TinyConfig(**overrides)


def register_tiny(models_module=None) -> None:
    """Add the tiny model to ssckit.models' registry dicts (idempotent)."""
    import ssckit.models as models

    entry = models.ModelEntry(TinyConfig, tiny_preset, TinyModel, lambda *a, **k: {},
                              lambda m: {"params": sum(p.numel() for p in m.parameters())})
    models.MODELS["tiny_test"] = entry
    models.MODEL_CONFIGS["tiny_test"] = TinyConfig


def register_commands() -> None:
    import ssckit.cli as cli

    for name, module in ENGINE_COMMANDS.items():
        cli.COMMANDS.setdefault(name, module)


def _scene(rng: np.random.Generator) -> np.ndarray:
    """Raw SemanticKITTI ids (256, 256, 32): road / sidewalk ground, a building row, one car, empty air."""
    raw = np.zeros(FULL_GRID, dtype=np.uint16)
    raw[:, :, :8] = 40  # road
    raw[:, 160:, :9] = 48  # sidewalk
    raw[:, 200:, 8:24] = 50  # building
    x0, y0 = rng.integers(20, 200), rng.integers(90, 150)
    raw[x0:x0 + 20, y0:y0 + 10, 8:16] = 10  # car
    return raw


def write_fake_semantic_kitti(root: Path, frames: dict[str, int], seed: int = 0, label_root: Path | None = None,
                              depth_root: Path | None = None) -> None:
    """SemanticKITTI layout under ``root`` (+ 1_8 / 1_1 targets under ``label_root``, depth under ``depth_root``)."""
    rng = np.random.default_rng(seed)
    s = CROP[0] / 1220.0
    K = KITTI_K.copy()
    K[:2] *= s
    P = np.zeros((3, 4))
    P[:, :3] = K
    for seq, n in frames.items():
        sdir = root / "sequences" / seq
        io.write_calib(sdir / "calib.txt", {"P0": P, "P1": P, "P2": P, "P3": P, "Tr": KITTI_TR[:3]})
        for i in range(n):
            frame = f"{5 * i:06d}"
            raw = _scene(rng)
            invalid = rng.random(FULL_GRID) < 0.05
            io.write_voxel_mask(sdir / "voxels" / f"{frame}.bin", raw > 0)
            io.write_voxel_label(sdir / "voxels" / f"{frame}.label", raw)
            io.write_voxel_mask(sdir / "voxels" / f"{frame}.invalid", invalid)
            img = rng.integers(0, 255, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
            img[: IMAGE_SIZE[1] // 2] //= 2  # darker top half: something for the conv to see
            io.write_image(sdir / "image_2" / f"{frame}.png", img)
            if depth_root is not None:
                depth = rng.uniform(2.0, 50.0, (IMAGE_SIZE[1], IMAGE_SIZE[0])).astype(np.float32)
                io.save_npy(depth_root / "sequences" / seq / f"{frame}.npy", depth)
            if label_root is not None:
                from ssckit.data.labels import SEMANTIC_KITTI

                target = SEMANTIC_KITTI.to_learning(raw)
                target[invalid] = 255
                io.save_npy(label_root / seq / f"{frame}_1_8.npy", downsample_labels(target, 8))


def tiny_experiment_yaml(path: Path, **data_overrides) -> Path:
    """An experiment file for the tiny model (schedule from the configs shipped in ssckit/configs)."""
    import yaml

    data = {"dataset": "semantic_kitti", "pipeline": "symphonies", "train_split": None, "val_split": None,
            "train_sequences": ["00"], "val_sequences": ["08"], "crop_size": list(CROP), "grid_scale": 8,
            "projection_scales": [1, 2], "use_depth": True, "batch_size": 2, "eval_batch_size": 2,
            "num_workers": 0, "flip_prob": 0.5}
    data.update(data_overrides)
    tree = {"defaults": ["schedule/adamw_lr2e-4_30e"], "name": "tiny", "seed": 7, "model": {"name": "tiny_test"},
            "data": data, "schedule": {"max_epochs": 2, "scheduler": {"milestones": [1]}},
            "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "num_sanity_val_steps": 0,
                        "progress_bar": False}}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path
