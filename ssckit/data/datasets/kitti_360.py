"""SSCBench-KITTI-360 reader (``<root>/data_2d_raw/<drive>/...``, ``<root>/preprocess/labels``); see docs/datasets.md.

Frame ids are SSCBench's own 6-digit renumbering (not KITTI-360's raw 10-digit ids). The calibration is fixed
(datasets.md §4): every loader hard-codes the same perspective intrinsics and cam0 -> velodyne extrinsics.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ssckit.data.datasets.base import FrameId, SSCDataset
from ssckit.data import io
from ssckit.data.labels import KITTI_360, LabelTable
from ssckit.errors import DataError, SsckitError

DRIVES = tuple(f"2013_05_28_drive_{i:04d}_sync" for i in (0, 2, 3, 4, 5, 6, 7, 9, 10))

FX = FY = 552.554261
CX, CY = 682.049453, 238.769549
STEREO_BF = 331.532557  # baseline * fx = 0.6 m * fx (SSCBench#8), used for the right camera's P
CAM0_TO_VELO = np.array([
    [0.04307104361, -0.08829286498, 0.995162929, 0.8043914418],
    [-0.999004371, 0.007784614041, 0.04392796942, 0.2993489574],
    [-0.01162548558, -0.9960641394, -0.08786966659, -0.1770225824],
    [0.0, 0.0, 0.0, 1.0],
])


def fixed_calib() -> dict[str, np.ndarray]:
    """The SSCBench-KITTI-360 calibration with SemanticKITTI-style keys.

    "P2" / "P3": (3, 4) projections of the left (image_00) / right (image_01) rectified camera; "K": (3, 3);
    "Tr": (4, 4) velodyne -> cam0 = inverse of cam0 -> velodyne. P3's 4th column assumes the 0.6 m baseline.
    """
    k = np.array([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])
    p2 = np.zeros((3, 4))
    p2[:, :3] = k
    p3 = p2.copy()
    p3[0, 3] = -STEREO_BF
    return {"P2": p2, "P3": p3, "K": k, "Tr": np.linalg.inv(CAM0_TO_VELO)}


class KITTI360(SSCDataset):
    """SSCBench-KITTI-360 semantic scene completion (19 classes).

    Args:
        root: the ``KITTI-360`` folder that contains ``data_2d_raw/`` (and usually ``preprocess/``).
        split: "train" (drives 0000, 0002-0005, 0007, 0010), "val" (0006) or "test" (0009; labels are public).
        sequences: drives as "0009", "9" or "2013_05_28_drive_0009_sync"; with ``split`` they must belong to it.
        label_root: preprocessed targets ``<label_root>/<drive>/NNNNNN_1_1.npy``; default ``<root>/preprocess/labels``.
        depth_root: stereo depth ``<depth_root>/<drive>/NNNNNN.npy``.
        v10_z_shift: must stay False (the z shift concerns SemanticKITTI v1.0 grids only).
        frames_from: enumerate frames from ``voxels/*.bin`` (default) or from the ground truth ``voxels/*.label``.
    """

    name: ClassVar[str] = "kitti_360"
    labels: ClassVar[LabelTable] = KITTI_360
    image_size: ClassVar[tuple[int, int]] = (1408, 376)
    SPLITS: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": tuple(DRIVES[i] for i in (0, 1, 2, 3, 4, 6, 8)),
        "val": (DRIVES[5],),
        "test": (DRIVES[7],),
    }
    VOXEL_EXTS: ClassVar[tuple[str, ...]] = ("bin", "label", "invalid")
    CAMERAS: ClassVar[tuple[int, ...]] = (0, 1)  # image_00 (left) / image_01 (right)
    _allow_unpacked_masks: ClassVar[bool] = True  # .invalid is one byte per voxel; decided by file size
    _force_labelled_valid: ClassVar[bool] = True

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
        if v10_z_shift:
            raise SsckitError("kitti_360: v10_z_shift applies to SemanticKITTI v1.0 grids only")
        if label_root is None:
            label_root = Path(root) / "preprocess" / "labels"
        super().__init__(root, split, sequences, label_root, depth_root, v10_z_shift, frames_from)

    def _check_root(self) -> None:
        if not (self.root / "data_2d_raw").is_dir():
            raise DataError(self.root, "no data_2d_raw/ folder: root must be the SSCBench KITTI-360 folder that "
                                       "contains data_2d_raw/2013_05_28_drive_00NN_sync/voxels")

    def _normalize_sequence(self, seq: str | int) -> str:
        s = str(seq).strip()
        name = f"2013_05_28_drive_{int(s):04d}_sync" if s.isdigit() else s
        if name not in DRIVES:
            raise SsckitError(f"kitti_360: unknown drive {seq!r}; expected one of "
                              f"{', '.join(d[17:21] for d in DRIVES)} (e.g. '0009' or '2013_05_28_drive_0009_sync')")
        return name

    def sequence_dir(self, seq: str) -> Path:
        return self.root / "data_2d_raw" / self._normalize_sequence(seq)

    def image_path(self, f: FrameId, cam: int = 0) -> Path:
        """``image_00/data_rect`` (left, default) or ``image_01/data_rect``; 2 / 3 are accepted as left / right."""
        cam = {2: 0, 3: 1}.get(cam, cam)
        if cam not in self.CAMERAS:
            raise ValueError(f"kitti_360 cameras are 0 (left) and 1 (right) (aliases 2, 3), got {cam!r}")
        return self.sequence_dir(f.sequence) / f"image_0{cam}" / "data_rect" / f"{f.frame}.png"

    def read_image(self, f: FrameId, cam: int = 0) -> np.ndarray:
        return super().read_image(f, cam)

    def depth_path(self, f: FrameId) -> Path:
        return self._depth_root() / self._normalize_sequence(f.sequence) / f"{f.frame}.npy"

    def read_calib(self, seq: str) -> dict[str, np.ndarray]:
        """Fixed calibration (same for every drive; see :func:`fixed_calib`). SSCBench ships no calibration file;
        a ``calib.txt`` in the drive folder (written by ``ssckit synth`` for down-scaled images) takes precedence."""
        own = self.sequence_dir(seq) / "calib.txt"
        if not own.is_file():
            return fixed_calib()
        calib = io.read_calib(own)
        calib["K"] = calib["P2"][:3, :3].copy()
        return calib
