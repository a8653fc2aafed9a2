"""Builds the model, data and Lightning Trainer from an :class:`~ssckit.config.ExperimentConfig` and runs
fit / validate / predict. Run folder layout::

    <run_dir>/config.yaml                 resolved config of the latest session
    <run_dir>/checkpoints/last.ckpt       every epoch (and on SIGTERM / SIGINT), atomic
    <run_dir>/checkpoints/best.ckpt       best ``checkpoint.monitor`` (val/mIoU)
    <run_dir>/logs/version_N/metrics.csv  losses, learning rates, per-class IoU (one version per session)
    <run_dir>/tb/version_N/               TensorBoard events of the same values
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from ssckit.config import ExperimentConfig, to_dict
from ssckit.engine.callbacks import (AtomicCheckpointIO, GracefulStop, NonFiniteLossGuard, RNGStateCallback,
                                     ThroughputCallback)
from ssckit.engine.datamodule import SSCDataModule
from ssckit.engine.lit_module import SSCModule
from ssckit.errors import SsckitError

RUN_DIR_ENV = "SSCKIT_RUN_DIR"  # set by process 0 so that DDP worker processes share its run folder
_QUIET = (r".*does not have many workers.*", r".*sync_dist=True.*", r".*Experiment logs directory.*",
          r".*LeafSpec.*", r".*litlogger.*", r".*is smaller than the logging interval.*",
          r".*checkpoint that ended before the epoch ended.*", r".*Checkpoint directory .* exists and is not empty.*")


def build_loggers(run_dir: Path) -> list[Any]:
    """CSV logs (``logs/``) and TensorBoard events (``tb/``); a missing tensorboard package is a one-line error."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    try:
        import tensorboard  # noqa: F401  (a core dependency of ssckit)
    except ImportError:
        raise SsckitError("TensorBoard logging needs the tensorboard package (a dependency of ssckit): "
                          "pip install tensorboard") from None
    return [CSVLogger(save_dir=str(run_dir), name="logs"),
            TensorBoardLogger(save_dir=str(run_dir), name="tb", default_hp_metric=False)]


def uses_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def build_module(cfg: ExperimentConfig) -> SSCModule:
    from ssckit.data.datasets import get_dataset_class
    from ssckit.models import build_model

    labels = get_dataset_class(cfg.data.dataset).labels
    model = build_model(cfg.model.name, cfg.model.config)
    return SSCModule(model, cfg.schedule, labels.num_classes, labels.class_names, config=to_dict(cfg))


def build_datamodule(cfg: ExperimentConfig, eval_split: str | None = None,
                     eval_sequences: list[str] | None = None) -> SSCDataModule:
    return SSCDataModule(cfg.data, cfg.data.pipeline or cfg.model.name, seed=cfg.seed, eval_split=eval_split,
                         eval_sequences=eval_sequences)


def has_validation(cfg: ExperimentConfig) -> bool:
    return bool(cfg.data.val_split or cfg.data.val_sequences)


def build_trainer(cfg: ExperimentConfig, stage: str, run_dir: Path | None = None,
                  callbacks: list[Any] | None = None) -> L.Trainer:
    """A Trainer for ``stage`` ("fit", "validate" or "predict"); fit adds checkpoints, logs and safety callbacks."""
    t, s = cfg.trainer, cfg.schedule
    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    sync_bn = t.sync_batchnorm
    if sync_bn and not uses_gpu(t.accelerator):
        sync_bn = False  # torch's SyncBatchNorm has no CPU path; plain BatchNorm per process instead
        if stage == "fit" and t.strategy != "auto":
            rank_zero_warn("trainer.sync_batchnorm is ignored without a GPU (BatchNorm statistics stay per process)")
    cbs = list(callbacks or [])
    kwargs: dict[str, Any] = {}
    if stage == "fit":
        assert run_dir is not None
        ckpt_dir = run_dir / "checkpoints"
        cbs += [ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                                enable_version_counter=False),
                GracefulStop(ckpt_dir / "last.ckpt"), NonFiniteLossGuard(), RNGStateCallback(),
                ThroughputCallback(), LearningRateMonitor(logging_interval="step")]
        if has_validation(cfg):
            cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=cfg.checkpoint.monitor,
                                       mode=cfg.checkpoint.mode, save_top_k=1, auto_insert_metric_name=False,
                                       enable_version_counter=False))
        if cfg.checkpoint.keep_all:
            cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", monitor=None, save_top_k=-1,
                                       every_n_epochs=1, auto_insert_metric_name=False))
        kwargs.update(logger=build_loggers(run_dir), default_root_dir=str(run_dir), max_epochs=s.max_epochs,
                      max_steps=s.max_steps, accumulate_grad_batches=s.accumulate_grad_batches,
                      gradient_clip_val=s.gradient_clip_val, gradient_clip_algorithm=s.gradient_clip_algorithm,
                      check_val_every_n_epoch=t.check_val_every_n_epoch, log_every_n_steps=t.log_every_n_steps,
                      num_sanity_val_steps=t.num_sanity_val_steps if has_validation(cfg) else 0)
        if not has_validation(cfg):
            kwargs["limit_val_batches"] = 0
        elif t.limit_val_batches is not None:
            kwargs["limit_val_batches"] = t.limit_val_batches
        if t.limit_train_batches is not None:
            kwargs["limit_train_batches"] = t.limit_train_batches
    else:
        kwargs.update(logger=False, enable_checkpointing=False)
        if stage == "validate" and t.limit_val_batches is not None:
            kwargs["limit_val_batches"] = t.limit_val_batches
    if t.progress_bar:
        cbs.append(TQDMProgressBar(refresh_rate=1))
    try:
        return L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
                         precision=t.precision, sync_batchnorm=sync_bn, use_distributed_sampler=False,
                         plugins=[AtomicCheckpointIO()], callbacks=cbs, deterministic=t.deterministic,
                         benchmark=t.benchmark, enable_progress_bar=t.progress_bar, enable_model_summary=False,
                         **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:  # includes Lightning's MisconfigurationException
        raise SsckitError(f"bad trainer settings: {str(e).splitlines()[0]}") from None


def maybe_compile(module: SSCModule, cfg: ExperimentConfig) -> None:
    """torch.compile the model in place (parameter names, hence checkpoints, stay the same)."""
    t = cfg.trainer
    if t.compile:
        module.model.compile(mode=t.compile_mode, backend=t.compile_backend)


@contextmanager
def shared_run_dir(run_dir: Path) -> Iterator[None]:
    """Expose ``run_dir`` to DDP worker processes (they re-run the command line) for the duration of a run."""
    old = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = old


ROOT_FLAGS = {"data_root": "--data-root", "label_root": "--label-root", "depth_root": "--depth-root",
              "teacher_cache_root": "--teacher-cache-root"}
ROOT_NEEDS = {"data_root": "", "label_root": "",
              "depth_root": "the pipeline reads stereo depth maps (data.use_depth=true); pass --depth-root DIR or set "
                            "SSCKIT_DEPTH_ROOT, or set data.use_depth=false",
              "teacher_cache_root": "model.teacher=cache distils from `ssckit cache-teacher` outputs; pass "
                                    "--teacher-cache-root DIR or set SSCKIT_TEACHER_CACHE_ROOT, or set "
                                    "model.teacher=none"}


def needed_roots(cfg: ExperimentConfig, stage: str) -> dict[str, bool]:
    """The data roots read at ``stage`` ("train", "val" or "predict"): root key -> required (else read if set).
    A pipeline class declares its own with ``roots(data_cfg, stage) -> {key: required}``."""
    from ssckit.data.pipelines import get_pipeline

    pipeline = get_pipeline(cfg.data.pipeline or cfg.model.name)
    needed = {"data_root": True, "label_root": False}
    needed.update(pipeline.roots(cfg.data, stage) if hasattr(pipeline, "roots") else {})
    m = cfg.model.config
    if stage == "train" and getattr(m, "teacher", None) == "cache" and not getattr(m, "teacher_cache_root", None):
        needed["teacher_cache_root"] = True  # distillation from `ssckit cache-teacher` outputs
    return needed


def check_roots(cfg: ExperimentConfig, stage: str, optional: bool = True) -> None:
    """Every root ``stage`` needs is set and is a folder, and (``optional``) so is every other root it reads when
    set; one-line errors naming the flag and the variable."""
    from ssckit.config import ROOT_ENV
    from ssckit.errors import DataError

    for key, required in needed_roots(cfg, stage).items():
        value = getattr(cfg.data, key)
        what = key.replace("_", " ")
        if not value:
            if required:
                raise SsckitError(f"no {what}: " + (ROOT_NEEDS.get(key) or f"pass {ROOT_FLAGS[key]} DIR or set "
                                                                           f"{ROOT_ENV[key]}"))
            continue
        if (required or optional) and not Path(value).is_dir():
            raise DataError(Path(value), f"{what} not found (from {ROOT_FLAGS[key]} / {ROOT_ENV[key]} or the run's "
                                         "saved config)")


def check_data(cfg: ExperimentConfig, samples: bool = True) -> SSCDataModule:
    """The training DataModule with its readers built, the other roots checked (:func:`check_roots`) and
    (``samples``) the first sample of the training and validation sets built: a wrong root, layout or file fails
    here, in one line."""
    dm = build_datamodule(cfg)
    dm.reader("train")  # the data root and its layout first
    check_roots(cfg, "train")
    if has_validation(cfg):
        dm.reader("val")
        check_roots(cfg, "val")
    if samples:
        dm.dataset("train")[(0, cfg.seed, 0)]  # with its augmentation key, as the sampler gives it
        if has_validation(cfg):
            dm.dataset("val")[0]
    return dm


def recipe_warnings(cfg: ExperimentConfig) -> list[str]:
    """Lines worth a warning before training: a Symphonies run on a dataset split from a random encoder."""
    m = cfg.model.config
    split_data = cfg.data.train_split is not None and not cfg.data.train_sequences  # synthetic configs list sequences
    if cfg.model.name == "symphonies" and not getattr(m, "pretrained_encoder", True) and split_data \
            and cfg.schedule.max_epochs > 1:
        return [f"model.pretrained_encoder=false: training Symphonies on {cfg.data.dataset} split "
                f"{cfg.data.train_split!r} from a random encoder; the official recipe starts from the MaskDINO COCO "
                "checkpoint (model.pretrained_encoder=true model.encoder_checkpoint=FILE)"]
    return []


def fit(cfg: ExperimentConfig, run_dir: Path, resume: Path | None = None,
        callbacks: list[Any] | None = None) -> tuple[L.Trainer, SSCModule]:
    """Train (or continue from ``resume``) into ``run_dir``."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg)
    dm = check_data(cfg, samples=False)
    trainer = build_trainer(cfg, "fit", run_dir, callbacks)
    for logger in trainer.loggers:
        logger.log_hyperparams(to_dict(cfg))
    maybe_compile(module, cfg)
    with shared_run_dir(run_dir), kept_signal_handlers():
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=False)
    return trainer, module


@contextmanager
def kept_signal_handlers() -> Iterator[None]:
    """Restore the SIGTERM / SIGINT handlers Lightning and GracefulStop replace, however fit ends."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load an ssckit checkpoint on the CPU; a missing or unreadable file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise SsckitError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise SsckitError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise SsckitError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return ckpt


def checkpoint_config(ckpt: dict[str, Any], path: str | os.PathLike) -> dict:
    cfg = (ckpt.get("ssckit") or {}).get("config")
    if not cfg:
        raise SsckitError(f"{path}: no ssckit config inside the checkpoint (not written by ssckit train?)")
    return cfg


def load_weights(module: SSCModule, ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.startswith("model.")]
    if missing or unexpected:
        names = ", ".join((missing + unexpected)[:5])
        raise SsckitError(f"{path}: weights do not fit the model ({len(missing)} missing, {len(unexpected)} "
                          f"unexpected, e.g. {names})")


def run_dir_of(checkpoint: Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``; otherwise the checkpoint's folder."""
    checkpoint = checkpoint.resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def validate(cfg: ExperimentConfig, ckpt: dict[str, Any], ckpt_path: Path, split: str | None,
             sequences: list[str] | None) -> tuple[L.Trainer, SSCModule, SSCDataModule]:
    """Score ``ckpt`` on a split; the module's ``last_scores`` holds the result on every process."""
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    load_weights(module, ckpt, ckpt_path)
    check_roots(cfg, "val", optional=False)  # a stale saved label root falls back to voxels/*.label
    dm = build_datamodule(cfg, split, sequences)
    dm.reader("val")
    trainer = build_trainer(cfg, "validate")
    maybe_compile(module, cfg)
    trainer.validate(module, datamodule=dm, verbose=False)
    return trainer, module, dm


def predict(cfg: ExperimentConfig, ckpt: dict[str, Any], ckpt_path: Path, split: str | None,
            sequences: list[str] | None, writer: Any) -> tuple[L.Trainer, SSCDataModule]:
    """Run ``writer`` (a PredictionWriter) over a split."""
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    load_weights(module, ckpt, ckpt_path)
    check_roots(cfg, "predict", optional=False)
    dm = build_datamodule(cfg, split, sequences)
    dm.reader("predict")
    trainer = build_trainer(cfg, "predict", callbacks=[writer])
    maybe_compile(module, cfg)
    trainer.predict(module, datamodule=dm, return_predictions=False)
    return trainer, dm
