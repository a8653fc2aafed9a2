"""Teacher outputs cached on disk (VLScene spec §9: exact, since VLScene uses no image augmentation).

Layout: ``<cache_root>/<sequence>/<frame>.npz``, one uncompressed npz per frame with ``features`` float16
(C, h, w) and ``logits`` float16 (K, h, w) -- about 7.9 MB + 0.3 MB per frame at 512 x 48 x 160. Files are written
atomically, so an existing file is complete and :func:`cache_dataset` can resume by skipping it.
"""
from __future__ import annotations

import io as _io
import os
import sys
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ssckit.data import io
from ssckit.data.datasets import FrameId, SSCDataset
from ssckit.errors import DataError, SsckitError
from ssckit.models.teachers.base import NUM_PROMPTS, VL_FEATURE_DIM, Teacher, vlscene_left_image


def cache_path(cache_root: str | os.PathLike, frame: FrameId) -> Path:
    """``<cache_root>/<sequence>/<frame>.npz``."""
    return Path(cache_root) / frame.sequence / f"{frame.frame}.npz"


def write_cache_entry(path: str | os.PathLike, features: np.ndarray | torch.Tensor,
                      logits: np.ndarray | torch.Tensor) -> None:
    """Atomically write one frame's (C, h, w) features and (K, h, w) logits as float16."""
    feats = _as_fp16(features)
    logit = _as_fp16(logits)
    if feats.ndim != 3 or logit.ndim != 3 or feats.shape[1:] != logit.shape[1:]:
        raise ValueError(f"features (C, h, w) and logits (K, h, w) must share (h, w): {feats.shape} / {logit.shape}")
    buf = _io.BytesIO()
    np.savez(buf, features=feats, logits=logit)
    io.atomic_write_bytes(path, buf.getvalue())


def _as_fp16(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float16).numpy()
    return np.ascontiguousarray(x, dtype=np.float16)


def read_cache_entry(path: str | os.PathLike, feature_shape: tuple[int, int, int],
                     logits_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One frame's (features, logits) as float16 arrays; DataError naming the file if missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "cached teacher output not found (run `ssckit cache-teacher` for this split)")
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("features", "logits") if k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(p, f"not a readable teacher cache file ({type(e).__name__}: {e}); delete it and "
                           "re-run `ssckit cache-teacher`") from None
    for key, shape in (("features", feature_shape), ("logits", logits_shape)):
        if key not in arrays:
            raise DataError(p, f"no {key!r} array in the cache file")
        a = arrays[key]
        if a.shape != tuple(shape):
            raise DataError(p, f"{key} have shape {a.shape}, expected {tuple(shape)} (cached for another "
                               "feature size / teacher?)")
        if a.dtype.kind != "f" or not np.isfinite(a).all():
            raise DataError(p, f"{key} are not finite floats ({a.dtype})")
    return arrays["features"], arrays["logits"]


class CachedTeacher(Teacher):
    """Reads :func:`cache_dataset` outputs by frame id: ``forward(left_image, frames)``; the image only gives the
    batch size and device (its pixels are not used)."""

    def __init__(self, cache_root: str | os.PathLike, feature_size: tuple[int, int],
                 feature_dim: int = VL_FEATURE_DIM, num_classes: int = NUM_PROMPTS) -> None:
        super().__init__(feature_size, feature_dim, num_classes)
        self.cache_root = Path(cache_root)
        if not self.cache_root.is_dir():
            raise DataError(self.cache_root, "teacher cache folder not found")
        self.freeze()

    def read(self, frame: FrameId) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.feature_size
        return read_cache_entry(cache_path(self.cache_root, frame), (self.feature_dim, h, w),
                                (self.num_classes, h, w))

    def _predict(self, left_image: torch.Tensor,
                 frames: Sequence[FrameId] | None) -> tuple[torch.Tensor, torch.Tensor]:
        if frames is None:
            raise SsckitError("CachedTeacher needs the frame ids of the batch (forward(image, frames))")
        pairs = [self.read(FrameId(*f)) for f in frames]
        feats = torch.from_numpy(np.stack([p[0] for p in pairs]))  # (B, C, h, w) fp16
        logits = torch.from_numpy(np.stack([p[1] for p in pairs]))  # (B, K, h, w) fp16
        dev = left_image.device
        return feats.to(dev).float(), logits.to(dev).float()


# --- cache writer --------------------------------------------------------------------------------------------------

@dataclass
class CacheSummary:
    done: int = 0
    skipped: int = 0
    failures: list[tuple[FrameId, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def line(self) -> str:
        return f"{self.done} done, {self.skipped} skipped, {self.failed} failed"


def _load_image(dataset: SSCDataset, frame: FrameId, width: int, height: int) -> np.ndarray:
    return vlscene_left_image(dataset.read_image(frame), width, height)  # left camera = the reader's default


def cache_dataset(dataset: SSCDataset, teacher: Teacher, cache_root: str | os.PathLike, image_width: int,
                  image_height: int = 384, batch_size: int = 4, device: str | torch.device = "cpu",
                  workers: int = 2, progress: bool = True) -> CacheSummary:
    """Run ``teacher`` on the left image of every frame of ``dataset`` (VLScene pipeline: width ``image_width``,
    bottom ``image_height`` rows) and write ``<cache_root>/<seq>/<frame>.npz``; existing files are skipped.

    Images are read and results written by a pool of ``workers`` threads while the teacher runs. Frames whose image
    cannot be read are reported in the summary (with the file at fault) and the others go on.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise SsckitError(f"batch size must be at least 1, got {batch_size}")
    summary = CacheSummary()
    todo = []
    for f in dataset.frames:
        if cache_path(cache_root, f).is_file():
            summary.skipped += 1
        else:
            todo.append(f)
    teacher = teacher.to(device)
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(todo), desc="cache-teacher", unit="frame", disable=not progress or not todo)
    writes: list[tuple[FrameId, Future]] = []
    with bar, ThreadPoolExecutor(max(1, workers)) as pool:
        def submit_reads(batch: list[FrameId]) -> list[Future]:
            return [pool.submit(_load_image, dataset, f, image_width, image_height) for f in batch]

        pending = submit_reads(batches[0]) if batches else []
        for i, batch in enumerate(batches):
            reads, pending = pending, (submit_reads(batches[i + 1]) if i + 1 < len(batches) else [])
            frames, images = [], []
            for f, fut in zip(batch, reads):
                try:
                    images.append(fut.result())
                    frames.append(f)
                except SsckitError as e:
                    summary.failures.append((f, str(e)))
                    bar.write(f"failed {f.sequence}/{f.frame}: {e}", file=sys.stderr)
                    bar.update(1)
            if not frames:
                continue
            x = torch.from_numpy(np.stack(images)).to(device)  # (B, 3, H, W)
            feats, logits = teacher(x, frames)
            feats16, logits16 = feats.to("cpu", torch.float16), logits.to("cpu", torch.float16)
            for j, f in enumerate(frames):
                writes.append((f, pool.submit(write_cache_entry, cache_path(cache_root, f), feats16[j],
                                              logits16[j])))
            writes = _finish_writes(writes, summary, bar, block=len(writes) > 4 * batch_size)  # bounded queue
        _finish_writes(writes, summary, bar, block=True)
    summary.failures.sort(key=lambda r: r[0])
    return summary


def _finish_writes(writes: list[tuple[FrameId, Future]], summary: CacheSummary, bar: Any,
                   block: bool) -> list[tuple[FrameId, Future]]:
    """Account for finished writes (all of them if ``block``); return the ones still running."""
    left = []
    for f, fut in writes:
        if not block and not fut.done():
            left.append((f, fut))
            continue
        try:
            fut.result()
            summary.done += 1
        except OSError as e:
            summary.failures.append((f, str(e)))
            bar.write(f"failed {f.sequence}/{f.frame}: {e}", file=sys.stderr)
        bar.update(1)
    return left
