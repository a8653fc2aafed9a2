"""The real SemanticKITTI frame 08/001000 (v1.0 grids): counts, geometry and calibration (datasets.md §6)."""
from __future__ import annotations

import numpy as np
import pytest

from ssckit.data import io
from ssckit.data.datasets import FrameId, SemanticKITTI
from ssckit.errors import DataError

F = FrameId("08", "001000")


@pytest.fixture(scope="module")
def ds(real_root) -> SemanticKITTI:
    return SemanticKITTI(real_root, split="val")


@pytest.fixture(scope="module")
def scan(ds) -> np.ndarray:
    return ds.read_scan(F)


def voxelise(points: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    """Occupancy of the 256x256x32 grid of 0.2 m voxels starting at ``origin`` (written here, not in ssckit)."""
    idx = np.floor((points[:, :3].astype(np.float64) - np.array(origin)) / 0.2).astype(np.int64)  # (N, 3)
    inside = ((idx >= 0) & (idx < np.array([256, 256, 32]))).all(axis=1)
    occ = np.zeros((256, 256, 32), dtype=bool)
    occ[idx[inside, 0], idx[inside, 1], idx[inside, 2]] = True
    return occ


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_enumeration(ds):
    assert ds.frames == [F]
    assert SemanticKITTI(ds.root, sequences=["8"]).frames == [F]


def test_known_counts_and_occluded_superset(ds):
    occupied = ds.read_input_voxels(F)
    invalid = ds.read_invalid(F)
    occluded = ds.read_occluded(F)
    assert (occupied.sum(), invalid.sum(), occluded.sum()) == (16_150, 507_368, 1_365_807)
    assert not (invalid & ~occluded).any()
    assert not (occupied & ~occluded).any()


def test_raw_files_round_trip_through_pack(real_root):
    path = real_root / "sequences" / "08" / "voxels" / "001000.invalid"
    assert io.pack_bits(io.read_voxel_mask(path)).tobytes() == path.read_bytes()


def test_scan_and_point_labels(ds, scan):
    assert scan.shape == (126_624, 4) and scan.dtype == np.float32
    sem, inst = ds.read_point_labels(F, num_points=len(scan))
    assert set(np.unique(sem).tolist()) == {0, 1, 10, 11, 15, 20, 40, 44, 48, 50, 51, 52, 70, 71, 72, 80, 81, 99, 252}
    assert inst.shape == sem.shape


def test_scan_matches_grid_after_z_shift(ds, scan):
    shifted = SemanticKITTI(ds.root, split="val", v10_z_shift=True).read_input_voxels(F)
    assert iou(voxelise(scan, (0.0, -25.6, -2.0)), shifted) > 0.99
    original = ds.read_input_voxels(F)
    assert iou(voxelise(scan, (0.0, -25.6, -2.2)), original) > 0.98
    assert iou(voxelise(scan, (0.0, -25.6, -2.0)), original) < 0.5  # the unshifted grid really is off by a voxel


def test_z_shift_of_invalid(ds):
    plain = ds.read_invalid(F)
    shifted = SemanticKITTI(ds.root, split="val", v10_z_shift=True).read_invalid(F)
    # bottom layer (2,417 invalid) dropped, new top layer (256*256) all invalid
    assert shifted.sum() == 507_368 - int(plain[:, :, 0].sum()) + 65_536
    np.testing.assert_array_equal(shifted[:, :, :31], plain[:, :, 1:])


def test_calibration_projects_21043_points(ds, scan):
    """Exact projection pixel ~ P2 . Tr . [x y z 1] (continuous coordinates), kept if w > 0 and
    0 <= u < 1226, 0 <= v < 370 (image size of sequence 08)."""
    calib = ds.read_calib("08")
    np.testing.assert_allclose(calib["K"], [[707.0912, 0, 601.8873], [0, 707.0912, 183.1104], [0, 0, 1]])
    hom = np.concatenate([scan[:, :3].astype(np.float64), np.ones((len(scan), 1))], axis=1)  # (N, 4)
    pix = hom @ (calib["P2"] @ calib["Tr"]).T  # (N, 3)
    w = pix[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = pix[:, 0] / w, pix[:, 1] / w
    inside = (w > 0) & (u >= 0) & (u < 1226) & (v >= 0) & (v < 370)
    assert int(inside.sum()) == 21_043


def test_missing_ground_truth_and_image_are_clear_errors(ds):
    with pytest.raises(DataError, match=r"voxels/001000\.label: file not found"):
        ds.voxel_target(F)
    with pytest.raises(DataError, match=r"image_2/001000\.png: file not found"):
        ds.read_image(F)
