"""SemanticKITTI SSC reader (KITTI odometry layout ``<root>/sequences/XX/...``); see docs/datasets.md."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ssckit.data import io
from ssckit.data.datasets.base import FrameId, SSCDataset
from ssckit.data.labels import SEMANTIC_KITTI, LabelTable
from ssckit.errors import DataError, SsckitError

_ALL = tuple(f"{i:02d}" for i in range(22))


class SemanticKITTI(SSCDataset):
    """SemanticKITTI semantic scene completion (20 classes).

    Args:
        root: the folder that contains ``sequences/`` (KITTI odometry ``dataset``).
        split: "train" (00-07, 09, 10), "val" (08) or "test" (11-21; only ``voxels/*.bin``, no labels).
        sequences: explicit sequences ("8" or "08"); with ``split`` they must belong to it. Neither given: every
            sequence 00-21 that has a ``voxels/`` folder.
        label_root: folder of preprocessed targets ``<label_root>/XX/NNNNNN_1_1.npy``.
        depth_root: folder of stereo depth ``<depth_root>/sequences/XX/NNNNNN.npy``.
        v10_z_shift: the voxel files are pre-Aug-2020 "v1.0" grids (shifted up one voxel): shift them down.
        frames_from: enumerate frames from ``voxels/*.bin`` (default) or from the ground truth ``voxels/*.label``.
    """

    name: ClassVar[str] = "semantic_kitti"
    labels: ClassVar[LabelTable] = SEMANTIC_KITTI
    image_size: ClassVar[tuple[int, int]] = (1220, 370)
    SPLITS: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
        "val": ("08",),
        "test": tuple(f"{i:02d}" for i in range(11, 22)),
    }
    VOXEL_EXTS: ClassVar[tuple[str, ...]] = ("bin", "label", "invalid", "occluded")
    CAMERAS: ClassVar[tuple[int, ...]] = (2, 3)  # left / right colour cameras

    def _check_root(self) -> None:
        if not (self.root / "sequences").is_dir():
            raise DataError(self.root, "no sequences/ folder: root must be the SemanticKITTI folder that contains "
                                       "sequences/XX/voxels")

    def _normalize_sequence(self, seq: str | int) -> str:
        s = str(seq).strip()
        name = f"{int(s):02d}" if s.isdigit() else s
        if name not in _ALL:
            raise SsckitError(f"semantic_kitti: unknown sequence {seq!r}; expected 00..21 (e.g. '8' or '08')")
        return name

    def sequence_dir(self, seq: str) -> Path:
        return self.root / "sequences" / self._normalize_sequence(seq)

    def image_path(self, f: FrameId, cam: int = 2) -> Path:
        """``image_2`` (left, default) or ``image_3`` (right) PNG."""
        if cam not in self.CAMERAS:
            raise ValueError(f"semantic_kitti cameras are {self.CAMERAS}, got {cam!r}")
        return self.sequence_dir(f.sequence) / f"image_{cam}" / f"{f.frame}.png"

    def depth_path(self, f: FrameId) -> Path:
        return self._depth_root() / "sequences" / self._normalize_sequence(f.sequence) / f"{f.frame}.npy"

    def scan_path(self, f: FrameId) -> Path:
        return self.sequence_dir(f.sequence) / "velodyne" / f"{f.frame}.bin"

    def point_label_path(self, f: FrameId) -> Path:
        return self.sequence_dir(f.sequence) / "labels" / f"{f.frame}.label"

    def read_calib(self, seq: str) -> dict[str, np.ndarray]:
        """``calib.txt`` -> {"P0".."P3": (3, 4), "Tr": (4, 4) velodyne -> rectified cam0, "K": P2[:3, :3]}."""
        seq = self._normalize_sequence(seq)
        if seq not in self._calib_cache:
            calib = io.read_calib(self.sequence_dir(seq) / "calib.txt")
            calib["K"] = calib["P2"][:, :3].copy()
            self._calib_cache[seq] = calib
        return {k: v.copy() for k, v in self._calib_cache[seq].items()}

    def read_occluded(self, f: FrameId) -> np.ndarray:
        """``.occluded`` -> bool (X, Y, Z); not used by the official metric (v1.0 shift: top layer occluded)."""
        return self._read_mask(f, "occluded")

    def read_scan(self, f: FrameId) -> np.ndarray:
        """LiDAR scan float32 (N, 4): x, y, z, remission."""
        return io.read_scan(self.scan_path(f))

    def read_point_labels(self, f: FrameId, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-point (semantic raw id, instance id), both uint16 (N,)."""
        return io.read_point_labels(self.point_label_path(f), num_points)
