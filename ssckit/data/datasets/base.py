"""Shared reader logic of the SSC datasets (SemanticKITTI, SSCBench-KITTI-360); see docs/datasets.md.

A reader resolves paths and decodes files for a list of frames; it does no cropping, normalisation or
projection (that is the model pipeline's job). Voxel grids are bool / uint16 / uint8 arrays of shape (X, Y, Z) =
(256, 256, 32) in [x][y][z] order; learning-id targets use 255 = ignore.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import os
import re
from pathlib import Path
from typing import ClassVar, NamedTuple, Sequence

import numpy as np

from ssckit.data import io
from ssckit.data.labels import IGNORE, LabelTable
from ssckit.errors import DataError, SsckitError

_FRAME_FILE = {ext: re.compile(rf"^(\d{{6}})\.{ext}$") for ext in ("bin", "label")}
_SCALE = re.compile(r"^1_(\d+)$")


class FrameId(NamedTuple):
    """One SSC frame: sequence folder name ("08", "2013_05_28_drive_0009_sync") and 6-digit frame id."""

    sequence: str
    frame: str


def shift_v10_grid(grid: np.ndarray, fill: bool | int) -> np.ndarray:
    """Shift a v1.0 SemanticKITTI grid DOWN one voxel in z: new[:, :, k] = old[:, :, k + 1].

    The old bottom layer is dropped; the new top layer (no v1.0 data) is set to ``fill``.
    """
    out = np.empty_like(grid)
    out[:, :, :-1] = grid[:, :, 1:]
    out[:, :, -1] = fill
    return out


class SSCDataset(ABC):
    """Base class: split/sequence selection, frame enumeration, voxel/target/depth readers.

    Subclasses define the class attributes and the layout hooks (``_normalize_sequence``, ``sequence_dir``,
    ``image_path``, ``depth_path``, ``read_calib``) and the invalid rule (``_force_labelled_valid``).
    Frames are enumerated from ``voxels/NNNNNN.bin`` (the model input), or with ``frames_from="label"`` from the
    ground-truth ``voxels/NNNNNN.label`` files, as the official evaluation does.
    """

    name: ClassVar[str]
    labels: ClassVar[LabelTable]
    image_size: ClassVar[tuple[int, int]]  # (W, H) of the top-left crop used by the models
    SPLITS: ClassVar[dict[str, tuple[str, ...]]]
    VOXEL_EXTS: ClassVar[tuple[str, ...]]
    grid: ClassVar[tuple[int, int, int]] = io.GRID
    _allow_unpacked_masks: ClassVar[bool] = False
    _force_labelled_valid: ClassVar[bool] = False  # KITTI-360: voxels with a non-zero raw label count as valid
    # v1.0 z shift: what the new top layer becomes, per voxel file kind
    _V10_TOP_FILL: ClassVar[dict[str, bool | int]] = {"bin": False, "invalid": True, "occluded": True, "label": 0}

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        sequences: Sequence[str] | None = None,
        label_root: str | os.PathLike | None = None,
        depth_root: str | os.PathLike | None = None,
        v10_z_shift: bool = False,
        frames_from: str = "bin",
    ) -> None:
        if frames_from not in _FRAME_FILE:
            raise ValueError(f"frames_from must be one of {sorted(_FRAME_FILE)}, got {frames_from!r}")
        self.frames_from = frames_from
        self.root = Path(root)
        self.label_root = None if label_root is None else Path(label_root)
        self.depth_root = None if depth_root is None else Path(depth_root)
        self.v10_z_shift = bool(v10_z_shift)
        self.split = split
        self._calib_cache: dict[str, dict[str, np.ndarray]] = {}
        self._check_root()
        self.sequences = self._select_sequences(split, sequences)
        self.frames: list[FrameId] = [f for seq in self.sequences for f in self._enumerate(seq)]

    # --- selection -------------------------------------------------------------------------------------------------

    def _check_root(self) -> None:
        """Raise DataError if ``root`` does not look like the dataset root (subclass hook)."""

    @abstractmethod
    def _normalize_sequence(self, seq: str | int) -> str:
        """Subclass hook."""

    def _select_sequences(self, split: str | None, sequences: Sequence[str] | None) -> list[str]:
        if split is not None and split not in self.SPLITS:
            raise SsckitError(f"{self.name}: unknown split {split!r}; choose one of {sorted(self.SPLITS)}")
        if isinstance(sequences, (str, int)):
            sequences = [sequences]  # a lone "08" is one sequence, not the characters "0", "8"
        if sequences is not None:
            chosen = list(dict.fromkeys(self._normalize_sequence(s) for s in sequences))
            if split is not None:
                outside = [s for s in chosen if s not in self.SPLITS[split]]
                if outside:
                    raise SsckitError(f"{self.name}: sequence(s) {', '.join(outside)} are not in split {split!r} "
                                      f"({', '.join(self.SPLITS[split])})")
            return chosen
        if split is not None:
            return list(self.SPLITS[split])
        # neither given: every known sequence present on disk
        known = [s for names in self.SPLITS.values() for s in names]
        present = [s for s in sorted(set(known)) if (self.sequence_dir(s) / "voxels").is_dir()]
        if not present:
            raise DataError(self.root, f"no {self.name} sequence with a voxels/ folder found")
        return present

    def _enumerate(self, seq: str) -> list[FrameId]:
        seq_dir = self.sequence_dir(seq)
        if not seq_dir.is_dir():
            raise DataError(seq_dir, f"sequence folder of {seq} not found")
        vox_dir = seq_dir / "voxels"
        pattern = _FRAME_FILE[self.frames_from]
        names = sorted(m.group(1) for p in (vox_dir.iterdir() if vox_dir.is_dir() else ())
                       if (m := pattern.match(p.name)))
        if not names:
            hint = " (ground truth; test sequences ship none)" if self.frames_from == "label" else ""
            raise DataError(vox_dir, f"no voxels/NNNNNN.{self.frames_from}{hint} under {seq_dir}")
        return [FrameId(seq, n) for n in names]

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, sequences={self.sequences}, frames={len(self)})"

    # --- paths -----------------------------------------------------------------------------------------------------

    @abstractmethod
    def sequence_dir(self, seq: str) -> Path:
        """Subclass hook."""

    def voxel_path(self, f: FrameId, ext: str) -> Path:
        """``<sequence_dir>/voxels/<frame>.<ext>``; ext in VOXEL_EXTS."""
        if ext not in self.VOXEL_EXTS:
            raise ValueError(f"{self.name} has no voxels/*.{ext} files; choose one of {self.VOXEL_EXTS}")
        return self.sequence_dir(f.sequence) / "voxels" / f"{f.frame}.{ext}"

    def target_path(self, f: FrameId, scale: str = "1_1") -> Path:
        """Preprocessed target ``<label_root>/<sequence>/<frame>_<scale>.npy``."""
        self._target_shape(scale)
        if self.label_root is None:
            raise SsckitError(f"{self.name}: label_root (folder of preprocessed <seq>/<frame>_1_1.npy targets) "
                              "is not set")
        return self.label_root / self._normalize_sequence(f.sequence) / f"{f.frame}_{scale}.npy"

    def _depth_root(self) -> Path:
        if self.depth_root is None:
            raise SsckitError(f"{self.name}: depth_root (folder of stereo depth .npy maps) is not set")
        return self.depth_root

    @abstractmethod
    def image_path(self, f: FrameId, cam: int = 2) -> Path:
        """Subclass hook."""

    @abstractmethod
    def depth_path(self, f: FrameId) -> Path:
        """Subclass hook."""

    def scan_path(self, f: FrameId) -> Path:
        raise SsckitError(f"{self.name} has no per-frame LiDAR scans")

    def point_label_path(self, f: FrameId) -> Path:
        raise SsckitError(f"{self.name} has no per-point labels")

    def has_labels(self, f: FrameId) -> bool:
        """Whether the frame has voxel ground truth (``.label``); test frames of SemanticKITTI do not."""
        return self.voxel_path(f, "label").is_file()

    # --- readers ---------------------------------------------------------------------------------------------------

    @abstractmethod
    def read_calib(self, seq: str) -> dict[str, np.ndarray]:
        """Subclass hook."""

    def read_image(self, f: FrameId, cam: int = 2) -> np.ndarray:
        """Full-size uint8 (H, W, 3) RGB image (uncropped)."""
        return io.read_image(self.image_path(f, cam))

    def _read_mask(self, f: FrameId, ext: str) -> np.ndarray:
        mask = io.read_voxel_mask(self.voxel_path(f, ext), self.grid, allow_unpacked=self._allow_unpacked_masks)
        return shift_v10_grid(mask, self._V10_TOP_FILL[ext]) if self.v10_z_shift else mask

    def read_input_voxels(self, f: FrameId) -> np.ndarray:
        """Input occupancy ``.bin`` -> bool (X, Y, Z) (v1.0 shift: top layer empty)."""
        return self._read_mask(f, "bin")

    def read_invalid(self, f: FrameId) -> np.ndarray:
        """Unobserved voxels ``.invalid`` -> bool (X, Y, Z) (v1.0 shift: top layer invalid)."""
        return self._read_mask(f, "invalid")

    def read_raw_labels(self, f: FrameId) -> np.ndarray:
        """Completed-scene ``.label`` -> uint16 raw ids (X, Y, Z) (v1.0 shift: top layer 0)."""
        raw = io.read_voxel_label(self.voxel_path(f, "label"), self.grid)
        return shift_v10_grid(raw, self._V10_TOP_FILL["label"]) if self.v10_z_shift else raw

    def voxel_target(self, f: FrameId) -> np.ndarray:
        """Learning-id target uint8 (X, Y, Z) from raw ``.label`` + ``.invalid`` (255 = ignore/invalid)."""
        raw = self.read_raw_labels(f)
        invalid = self.read_invalid(f)
        if self._force_labelled_valid:
            invalid &= raw == 0
        try:
            target = self.labels.to_learning(raw)
        except ValueError as e:
            raise DataError(self.voxel_path(f, "label"), str(e)) from None
        target[invalid] = IGNORE  # to_learning returns a fresh array (fancy indexing of the LUT)
        return target

    def _target_shape(self, scale: str) -> tuple[int, int, int]:
        m = _SCALE.match(scale)
        d = int(m.group(1)) if m else 0
        if d < 1 or any(s % d for s in self.grid):
            raise ValueError(f"target scale must be '1_N' with N dividing {self.grid}, got {scale!r}")
        return (self.grid[0] // d, self.grid[1] // d, self.grid[2] // d)

    def read_target(self, f: FrameId, scale: str = "1_1") -> np.ndarray:
        """Preprocessed target ``<frame>_<scale>.npy`` -> uint8 (X/N, Y/N, Z/N); read as stored (never z-shifted)."""
        return io.read_target(self.target_path(f, scale), self._target_shape(scale), self.labels.num_classes)

    def read_depth(self, f: FrameId) -> np.ndarray:
        """Stereo depth (m) float32 (H, W), full image size."""
        return io.read_depth(self.depth_path(f))
