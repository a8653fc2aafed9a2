"""Training targets from raw voxel labels (datasets.md §3.1, §3.2): ``<label_root>/<seq>/<frame>_1_{1,2,8}.npy``.

The 1:1 target is the dataset's ``voxel_target`` rule (SSC lookup table, invalid -> 255; KITTI-360 forces labelled
voxels valid first); coarser scales use the MonoScene / SSC ``_downsample_label`` rule (:func:`downsample_labels`).
All targets are written as uint8 with :func:`ssckit.data.io.save_npy` (atomic), so a run can be resumed: a frame
whose outputs all exist is skipped.
"""
from __future__ import annotations

import multiprocessing
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, NamedTuple, Sequence

import numpy as np

from ssckit.data import io
from ssckit.data.datasets import FrameId, SSCDataset
from ssckit.data.labels import IGNORE
from ssckit.errors import SsckitError

DEFAULT_SCALES: tuple[str, ...] = ("1_1", "1_2", "1_8")
EMPTY_RATIO = 0.95
_SCALE = re.compile(r"^1_(\d+)$")
_MAX_COUNT_CELLS = 1 << 22  # blocks x classes per bincount chunk (bounds memory to ~32 MB)

Status = Literal["done", "skipped", "failed", "unlabelled"]


def scale_factor(scale: str) -> int:
    """"1_8" -> 8."""
    m = _SCALE.match(scale)
    if not m or int(m.group(1)) < 1:
        raise SsckitError(f"target scale must look like 1_1, 1_2 or 1_8, got {scale!r}")
    return int(m.group(1))


def _as_uint8_labels(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.dtype == np.uint8:
        return lab
    if lab.size and (lab.min() < 0 or lab.max() > 255 or (lab.dtype.kind == "f" and (lab != np.round(lab)).any())):
        raise ValueError("labels must be integers in 0..255")
    return lab.astype(np.uint8)


def downsample_labels(labels: np.ndarray, ds: int, ignore_index: int = IGNORE,
                      empty_ratio: float = EMPTY_RATIO) -> np.ndarray:
    """Downsample a label grid (X, Y, Z) by ``ds`` per axis; per ds^3 block (MonoScene ``_downsample_label``):

    - n0 = #0 (empty), ni = #ignore; if n0 + ni > empty_ratio * ds^3: 0 if n0 > ni else ignore (ties -> ignore);
    - otherwise the most frequent label other than 0 / ignore, ties -> the smallest id.

    Vectorised: blocks become rows, labels are compacted to the ids present, one bincount per chunk of rows.
    """
    lab = _as_uint8_labels(labels)
    X, Y, Z = lab.shape
    if ds < 1 or X % ds or Y % ds or Z % ds:
        raise ValueError(f"downsampling factor {ds} does not divide the grid {lab.shape}")
    if ds == 1:
        return lab.copy()
    out_shape = (X // ds, Y // ds, Z // ds)
    cells = ds ** 3
    blocks = lab.reshape(X // ds, ds, Y // ds, ds, Z // ds, ds).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(-1, cells)  # (B, ds^3), row b = block (bx, by, bz) in C order
    n_empty = (blocks == 0).sum(axis=1)
    n_ignore = (blocks == ignore_index).sum(axis=1)
    mostly_empty = n_empty + n_ignore > empty_ratio * cells
    result = np.where(n_empty > n_ignore, 0, ignore_index).astype(np.uint8)

    present = np.bincount(blocks.reshape(-1), minlength=256) > 0
    present[[0, ignore_index]] = False
    classes = np.flatnonzero(present)  # sorted: argmax's first maximum is the smallest id
    need = np.flatnonzero(~mostly_empty)
    if need.size:
        L = classes.size + 1  # compact id L-1 collects 0 / ignore, never counted
        compact = np.full(256, L - 1, dtype=np.int64)
        compact[classes] = np.arange(classes.size)
        step = max(1, _MAX_COUNT_CELLS // L)
        for start in range(0, need.size, step):  # chunks of many blocks, not a per-block loop
            rows = need[start:start + step]
            ids = compact[blocks[rows]]  # (R, ds^3)
            flat = (np.arange(rows.size)[:, None] * L + ids).reshape(-1)
            counts = np.bincount(flat, minlength=rows.size * L).reshape(rows.size, L)  # (R, L)
            result[rows] = classes[counts[:, :-1].argmax(axis=1)]
    return result.reshape(out_shape)


def make_targets(target: np.ndarray, scales: Sequence[str] = DEFAULT_SCALES) -> dict[str, np.ndarray]:
    """Full-resolution target -> {scale: uint8 grid} for every requested scale (1_1 is the target itself)."""
    full = _as_uint8_labels(target)
    return {s: downsample_labels(full, scale_factor(s)) for s in scales}


# --- dataset driver --------------------------------------------------------------------------------------------------

class FrameResult(NamedTuple):
    frame: FrameId
    status: Status
    message: str = ""


@dataclass
class PreprocessSummary:
    done: int = 0
    skipped: int = 0
    unlabelled: int = 0
    failures: list[FrameResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def line(self) -> str:
        text = f"{self.done} done, {self.skipped} skipped, {self.failed} failed"
        return text + (f", {self.unlabelled} without labels (test split)" if self.unlabelled else "")


def outputs_exist(dataset: SSCDataset, f: FrameId, scales: Sequence[str]) -> bool:
    return all(dataset.target_path(f, s).is_file() for s in scales)


def is_unlabelled_test_frame(dataset: SSCDataset, f: FrameId) -> bool:
    """A frame of a test sequence that ships no ``.label`` (SemanticKITTI 11-21): nothing to preprocess."""
    return f.sequence in dataset.SPLITS.get("test", ()) and not dataset.has_labels(f)


def process_frame(dataset: SSCDataset, f: FrameId, scales: Sequence[str]) -> FrameResult:
    """Compute and write one frame's targets; data problems become a "failed" result naming the file."""
    try:
        for scale, grid in make_targets(dataset.voxel_target(f), scales).items():
            io.save_npy(dataset.target_path(f, scale), grid)
    except (SsckitError, OSError) as e:
        return FrameResult(f, "failed", str(e))
    return FrameResult(f, "done")


_WORKER_STATE: dict[str, object] = {}


def _init_worker(dataset: SSCDataset, scales: tuple[str, ...]) -> None:
    _WORKER_STATE["dataset"] = dataset
    _WORKER_STATE["scales"] = scales


def _work(f: FrameId) -> FrameResult:
    return process_frame(_WORKER_STATE["dataset"], f, _WORKER_STATE["scales"])  # type: ignore[arg-type]


def plan_frames(dataset: SSCDataset, scales: Sequence[str],
                summary: PreprocessSummary) -> list[FrameId]:
    """Frames that still need work; counts the skipped and unlabelled ones into ``summary``."""
    todo = []
    for f in dataset.frames:
        if outputs_exist(dataset, f, scales):
            summary.skipped += 1
        elif is_unlabelled_test_frame(dataset, f):
            summary.unlabelled += 1
        else:
            todo.append(f)
    return todo


def preprocess_dataset(dataset: SSCDataset, scales: Sequence[str] = DEFAULT_SCALES, workers: int = 1,
                       progress: bool = True) -> PreprocessSummary:
    """Write the targets of every frame of ``dataset`` under its ``label_root`` (resumable, parallel)."""
    from tqdm import tqdm

    scales = tuple(dict.fromkeys(scales))
    for s in scales:
        if any(n % scale_factor(s) for n in dataset.grid):
            raise SsckitError(f"scale {s} does not divide the {dataset.name} grid {dataset.grid}")
    summary = PreprocessSummary()
    todo = plan_frames(dataset, scales, summary)
    bar = tqdm(total=len(todo), desc="preprocess", unit="frame", disable=not progress or not todo)
    results: Iterable[FrameResult]
    with bar:
        if workers <= 1 or len(todo) <= 1:
            results = (process_frame(dataset, f, scales) for f in todo)
            _collect(results, summary, bar)
        else:
            with multiprocessing.get_context().Pool(min(workers, len(todo)), initializer=_init_worker,
                                                    initargs=(dataset, scales)) as pool:
                _collect(pool.imap_unordered(_work, todo), summary, bar)
    summary.failures.sort(key=lambda r: r.frame)
    return summary


def _collect(results: Iterable[FrameResult], summary: PreprocessSummary, bar: Any) -> None:
    for r in results:
        if r.status == "done":
            summary.done += 1
        else:
            summary.failures.append(r)
            bar.write(f"failed {r.frame.sequence}/{r.frame.frame}: {r.message}", file=sys.stderr)
        bar.update(1)
