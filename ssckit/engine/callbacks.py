"""Callbacks and plugins that make runs survive: atomic checkpoints, RNG state in checkpoints, a checkpoint on
SIGTERM / SIGINT, a non-finite-loss guard, samples/s in the progress bar, and the prediction writer."""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from ssckit.errors import SsckitError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: a checkpoint file is
    always either the old one or the complete new one, never a torn write."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class RNGStateCallback(Callback):
    """Stores the Python / NumPy / torch (and CUDA) RNG states in checkpoints and restores them on resume, so a
    resumed run draws the same dropout masks as an uninterrupted one (data augmentation has its own keys)."""

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # this process's device only
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(_tuple(state["python"]))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class TrainingInterrupted(SsckitError):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, signum: int, path: Path, epoch: int, step: int) -> None:
        self.signum, self.path, self.epoch, self.step = signum, path, epoch, step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at epoch {epoch}, step {step}; checkpoint saved to {path} "
                         f"(continue with: ssckit train --resume {path})")


class GracefulStop(Callback):
    """On SIGTERM / SIGINT during fitting: finish the current optimizer step or validation batch, save ``path`` and
    stop with :class:`TrainingInterrupted`. A checkpoint saved during validation records that validation as not yet
    run, so ``--resume`` runs all of it again. A second signal stops at once. Every process agrees: one all-reduce
    per training batch and per validation batch that every process has (evaluation shards may be uneven; a signal
    during a longer shard's extra batches takes effect at the next training step)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._val_synced_batches = 0  # validation batches every process runs (the all-reduce is safe there)
        self._val_start: dict[str, int] | None = None  # validation progress totals when the validation began
        self._in_validation = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # second signal: give up waiting
            self._restore()
            raise KeyboardInterrupt
        self.received = signum

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        accumulating = (batch_idx + 1) % trainer.accumulate_grad_batches != 0 \
            and batch_idx + 1 != trainer.num_training_batches
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if stop and not accumulating:
            self._stop(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            self._val_synced_batches = 0
            return
        total = trainer.fit_loop.epoch_loop.val_loop.batch_progress.total
        # a resumed interrupted validation starts from the "1 batch started, none processed" state saved below
        total.ready = total.started = total.processed = total.completed
        self._val_start = total.state_dict()
        n = sum(trainer.num_val_batches)
        n = torch.tensor(float(n) if n != float("inf") else 0.0, device=pl_module.device)
        self._val_synced_batches = int(trainer.strategy.reduce(n, reduce_op="min")) if trainer.world_size > 1 \
            else int(n)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx >= self._val_synced_batches:
            return
        if trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            self._in_validation = True
            self._stop(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not (self._in_validation and self._val_start is not None):
            return
        # Lightning resumes a validation that was "started but not processed" (restarted mid-evaluation) from a fresh
        # loader; mark it so at its first batch, so the whole validation (and its checkpoints) runs again on resume.
        done = self._val_start["completed"]
        key = "epoch_loop.val_loop.batch_progress"
        progress = checkpoint["loops"]["fit_loop"][key]
        progress["total"] = {"ready": done + 1, "started": done + 1, "processed": done, "completed": done}
        progress["current"] = {"ready": 1, "started": 1, "processed": 0, "completed": 0}
        progress["is_last_batch"] = False

    def _stop(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path)
        signum = self.received or signal.SIGTERM
        self._restore()
        raise TrainingInterrupted(signum, self.path, trainer.current_epoch, trainer.global_step)


class NonFiniteLoss(SsckitError):
    """The training loss became NaN or infinite."""


class NonFiniteLossGuard(Callback):
    """Stops before ``backward`` when the loss is NaN / inf, naming the epoch, step, frames and loss terms."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        terms = getattr(pl_module, "last_losses", {}) or {}
        detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
        frames = ", ".join(getattr(pl_module, "last_frames", []) or []) or "unknown"
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step} (batch " \
                f"{trainer.fit_loop.epoch_loop.batch_idx + 1} of the epoch)"
        value = "non-finite on another process" if finite else f"{float(loss.detach()):g}"
        raise NonFiniteLoss(f"training loss is {value} at {where}; frames {frames}; terms: {detail or 'n/a'}. "
                            "Try a lower learning rate, 32-true precision or gradient clipping")


class ThroughputCallback(Callback):
    """Training samples per second (all processes, data loading included) in the progress bar and the logs
    (``train/samples_per_s``), smoothed over steps."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self._last: float | None = None
        self._rate: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last is not None:
            n = batch["img"].shape[0] if isinstance(batch, dict) and "img" in batch else 1
            rate = n * trainer.world_size / max(now - self._last, 1e-9)
            self._rate = rate if self._rate is None else self.smoothing * self._rate + (1 - self.smoothing) * rate
            pl_module.log("train/samples_per_s", self._rate, prog_bar=True, on_step=True, on_epoch=False,
                          batch_size=n)
        self._last = now


class PredictionWriter(BasePredictionWriter):
    """Writes each predicted frame as ``<out>/sequences/<seq>/predictions/<frame>.label`` (flat uint16 raw ids,
    via :mod:`ssckit.submission`) and/or ``.npy`` (uint8 learning ids at the model grid). A coarser model grid is
    repeated up to 256x256x32 for ``.label`` files."""

    def __init__(self, out_dir: str | os.PathLike, labels: Any, formats: tuple[str, ...] = ("label",),
                 grid_scale: int = 1) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.labels = labels
        self.formats = tuple(formats)
        self.grid_scale = grid_scale
        self.written = 0

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        from ssckit.data.io import save_npy
        from ssckit.submission import prediction_path, write_prediction_label

        preds = prediction["pred"].cpu().numpy()  # (B, X, Y, Z) uint8
        for pred, seq, frame in zip(preds, prediction["sequence"], prediction["frame_id"]):
            if "npy" in self.formats:
                save_npy(prediction_path(self.out_dir, seq, frame).with_suffix(".npy"), pred)
            if "label" in self.formats:
                full = pred
                if self.grid_scale > 1:
                    s = self.grid_scale
                    full = pred.repeat(s, axis=0).repeat(s, axis=1).repeat(s, axis=2)  # (256, 256, 32)
                write_prediction_label(self.out_dir, (seq, frame), full, self.labels)
            self.written += 1

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("ssckit_predictions_written")  # every process has written its frames
