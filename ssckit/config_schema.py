"""Typed schemas of ssckit experiment configs (composed by :mod:`ssckit.config`) and their value checks."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, List, Optional

from ssckit.errors import SsckitError

GROUPS = ("dataset", "model", "schedule", "experiment")
ROOT_ENV = {"data_root": "SSCKIT_DATA_ROOT", "label_root": "SSCKIT_LABEL_ROOT", "depth_root": "SSCKIT_DEPTH_ROOT",
            "teacher_cache_root": "SSCKIT_TEACHER_CACHE_ROOT"}
CONFIG_DIR_ENV = "SSCKIT_CONFIG_DIR"
DERIVED_MODEL_KEYS = ("dataset", "num_classes", "image_shape", "scene_shape", "voxel_size", "frustum_size")
FULL_GRID = (256, 256, 32)
BASE_VOXEL = 0.2
FLOAT_PATTERN = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "64-true")


@dataclass
class DataConfig:
    dataset: str = "semantic_kitti"  # key of ssckit.data.datasets.DATASETS
    data_root: Optional[str] = None  # from --data-root / SSCKIT_DATA_ROOT only
    label_root: Optional[str] = None  # preprocessed <seq>/<frame>_1_N.npy targets (else computed from .label)
    depth_root: Optional[str] = None  # stereo depth .npy maps
    teacher_cache_root: Optional[str] = None  # `ssckit cache-teacher` output (VLScene training distillation)
    pipeline: Optional[str] = None  # sample builder (ssckit.data.pipelines); None = the model's name
    train_split: Optional[str] = "train"
    val_split: Optional[str] = "val"
    train_sequences: Optional[List[str]] = None  # instead of train_split (e.g. synthetic data)
    val_sequences: Optional[List[str]] = None
    batch_size: int = 1  # per process
    eval_batch_size: int = 1
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    image_scale: float = 1.0  # model input = the dataset's crop (1220x370 / 1408x376) x image_scale
    source_scale: float = 1.0  # scale the images on disk were written at (ssckit synth --image-scale)
    crop_size: Optional[List[int]] = None  # (W, H) model input overriding the scaled dataset crop
    grid_scale: int = 1  # target / model grid = 256x256x32 / grid_scale (majority-downsampled labels)
    frustum_size: int = 8  # frustum-proportion loss: frustum_size^2 image tiles
    projection_scales: List[int] = field(default_factory=lambda: [1, 2])  # projected_pix_<s> etc. in batches
    use_depth: bool = True
    flip_prob: float = 0.0  # training-time horizontal flip probability
    flip_mode: str = "official"  # "official" (Symphonies' quirky flip) or "exact" (mirrored camera)
    v10_z_shift: bool = False
    max_points: int = 32768  # VLScene point head: LiDAR points per training sample (padded / subsampled)


@dataclass
class ParamGroupConfig:
    prefix: str = ""  # parameter-name prefix (relative to the model), e.g. "encoder.backbone."
    lr_mult: float = 1.0


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | adam | sgd
    lr: float = 2e-4
    weight_decay: float = 1e-4
    eps: float = 1e-8
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9  # sgd only
    lr_multipliers: Optional[List[ParamGroupConfig]] = None  # None = the model's own ``lr_multipliers``


@dataclass
class SchedulerConfig:
    name: str = "multistep"  # multistep | cosine | constant (stepped once per epoch)
    milestones: List[int] = field(default_factory=lambda: [25])
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine only


@dataclass
class ScheduleConfig:
    max_epochs: int = 30
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: str = "norm"  # norm | value
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps
    devices: Any = 1  # int, list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    sync_batchnorm: bool = False  # GPU only (ignored with a warning on CPU)
    precision: str = "32-true"  # 32-true | 16-mixed | bf16-mixed | ...
    compile: bool = False  # torch.compile the model (in place, checkpoint keys unchanged)
    compile_mode: Optional[str] = None
    compile_backend: str = "inductor"
    check_val_every_n_epoch: int = 1
    limit_train_batches: Any = None  # int (batches) or float (fraction)
    limit_val_batches: Any = None
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    deterministic: bool = False
    benchmark: Optional[bool] = None
    progress_bar: bool = True


@dataclass
class CheckpointConfig:
    monitor: str = "val/mIoU"
    mode: str = "max"
    keep_all: bool = False  # also keep epochNNN.ckpt of every epoch (last.ckpt and best.ckpt are always kept)


@dataclass
class ModelSpec:
    name: str = ""
    preset: Optional[str] = None
    config: Any = None  # the model's typed config dataclass instance (set after composition)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 42
    run_root: str = "runs"  # runs go to <run_root>/<name>/<timestamp> unless --run-dir is given
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def image_size(data: DataConfig, dataset_crop: tuple[int, int]) -> tuple[int, int]:
    """(W, H) of the model input: ``crop_size`` or the dataset crop scaled by ``image_scale``."""
    if data.crop_size is not None:
        return int(data.crop_size[0]), int(data.crop_size[1])
    return round(dataset_crop[0] * data.image_scale), round(dataset_crop[1] * data.image_scale)


def validate(cfg: ExperimentConfig) -> None:
    """Checks beyond types: choices and ranges."""
    from ssckit.data.datasets import DATASETS

    d, s, t = cfg.data, cfg.schedule, cfg.trainer

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise SsckitError(f"bad config value {key}: {what}")

    need(d.dataset in DATASETS, "data.dataset", f"{d.dataset!r} is not one of {sorted(DATASETS)}")
    need(d.batch_size >= 1 and d.eval_batch_size >= 1, "data.batch_size", "must be >= 1")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(d.image_scale > 0, "data.image_scale", "must be > 0")
    need(d.source_scale > 0, "data.source_scale", "must be > 0")
    need(d.crop_size is None or (len(d.crop_size) == 2 and min(d.crop_size) > 0), "data.crop_size",
         "must be [W, H] with positive sizes")
    need(d.grid_scale in (1, 2, 4, 8), "data.grid_scale", "must be 1, 2, 4 or 8")
    need(all(p in (1, 2, 4, 8) and p * d.grid_scale <= 32 for p in d.projection_scales), "data.projection_scales",
         "entries must be 1, 2, 4 or 8 (times grid_scale at most 32)")
    need(d.frustum_size >= 1, "data.frustum_size", "must be >= 1")
    need(d.max_points >= 1, "data.max_points", "must be >= 1")
    need(0.0 <= d.flip_prob <= 1.0, "data.flip_prob", "must be in [0, 1]")
    need(d.flip_mode in ("official", "exact"), "data.flip_mode", f"{d.flip_mode!r} is not 'official' or 'exact'")
    need(s.max_epochs >= 1 or s.max_steps > 0, "schedule.max_epochs", "must be >= 1")
    need(s.accumulate_grad_batches >= 1, "schedule.accumulate_grad_batches", "must be >= 1")
    need(s.gradient_clip_algorithm in ("norm", "value"), "schedule.gradient_clip_algorithm", "norm or value")
    need(s.optimizer.name in ("adamw", "adam", "sgd"), "schedule.optimizer.name", "adamw, adam or sgd")
    need(s.optimizer.lr > 0, "schedule.optimizer.lr", "must be > 0")
    need(len(s.optimizer.betas) == 2, "schedule.optimizer.betas", "needs 2 values")
    need(s.scheduler.name in ("multistep", "cosine", "constant"), "schedule.scheduler.name",
         "multistep, cosine or constant")
    need(str(t.precision) in PRECISIONS, "trainer.precision", f"{t.precision!r} is not one of {PRECISIONS}")
    need(cfg.checkpoint.mode in ("min", "max"), "checkpoint.mode", "min or max")
    for key in ("limit_train_batches", "limit_val_batches"):
        v = getattr(t, key)
        need(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0), f"trainer.{key}",
             "an int (batches) or a float fraction")
