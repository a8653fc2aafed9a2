"""`ssckit check-data`: clean synthetic data passes; each kind of planted fault is reported with its path."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from ssckit.data import io
from ssckit.data.check import check_dataset


@pytest.fixture(scope="module")
def clean(synth_root: Path) -> Path:
    return synth_root


@pytest.fixture()
def copy(clean: Path, tmp_path: Path) -> Path:
    """A private copy of sequence 08 (3 SSC frames) with its depth maps, to break."""
    root = tmp_path / "data"
    shutil.copytree(clean / "sequences" / "08", root / "sequences" / "08")
    shutil.copytree(clean / "depth" / "sequences" / "08", root / "depth" / "sequences" / "08")
    return root


def _check_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from ssckit.commands import check_data

    parser = argparse.ArgumentParser()
    check_data.add_arguments(parser)
    code = check_data.run(parser.parse_args(argv))
    return code, capsys.readouterr().out


def test_clean_synth_data_passes(clean: Path, capsys: pytest.CaptureFixture) -> None:
    code, out = _check_cli([str(clean), "--depth-root", str(clean / "depth")], capsys)
    assert code == 0
    # test sequence 11 ships voxels/*.bin only (no .label / .invalid / .occluded, no point labels): not an error
    assert "3 sequences, 10 SSC frames" in out and "0 errors" in out and "ERROR" not in out


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _label_with(raw_id: int) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        path = root / "sequences/08/voxels/000005.label"
        raw = io.read_voxel_label(path)
        raw[10, 10, 10] = raw_id
        io.write_voxel_label(path, raw)
    return plant


def _depth_with(value: float) -> Callable[[Path], None]:
    def plant(root: Path) -> None:
        path = root / "depth/sequences/08/000005.npy"
        depth = np.load(path)
        depth[3, 4] = value
        np.save(path, depth)
    return plant


# (fault name, how to plant it, path that must be named, problem kind)
FAULTS = [
    ("voxels without an image", lambda r: (r / "sequences/08/image_2/000005.png").unlink(),
     "sequences/08/image_2/000005.png", "missing"),
    ("image without voxels", lambda r: [p.unlink() for p in (r / "sequences/08/voxels").glob("000005.*")],
     "sequences/08/image_2/000005.png", "missing"),
    ("missing voxel file", lambda r: (r / "sequences/08/voxels/000010.invalid").unlink(),
     "sequences/08/voxels/000010.invalid", "missing"),
    ("missing calibration", lambda r: (r / "sequences/08/calib.txt").unlink(), "sequences/08/calib.txt", "missing"),
    ("unparsable calibration", lambda r: (r / "sequences/08/calib.txt").write_text("P0: 1 2 3\nTr: x\n"),
     "sequences/08/calib.txt", "calib"),
    ("truncated labels", lambda r: _truncate(r / "sequences/08/voxels/000000.label"),
     "sequences/08/voxels/000000.label", "size"),
    ("oversized mask", lambda r: (r / "sequences/08/voxels/000000.occluded").write_bytes(b"\0" * 2_097_152),
     "sequences/08/voxels/000000.occluded", "size"),
    ("truncated image", lambda r: _truncate(r / "sequences/08/image_3/000010.png"),
     "sequences/08/image_3/000010.png", "unreadable"),
    ("truncated scan", lambda r: _truncate(r / "sequences/08/velodyne/000000.bin", 0.3333),
     "sequences/08/velodyne/000000.bin", "size"),
    ("label id outside the lookup table", _label_with(1000), "sequences/08/voxels/000005.label", "labels"),
    ("unused label id", _label_with(300), "sequences/08/voxels/000005.label", "labels"),
    ("NaN depth", _depth_with(np.nan), "depth/sequences/08/000005.npy", "depth"),
    ("negative depth", _depth_with(-1.0), "depth/sequences/08/000005.npy", "depth"),
    ("depth of the wrong size", lambda r: np.save(r / "depth/sequences/08/000000.npy", np.ones((10, 20), np.float32)),
     "depth/sequences/08/000000.npy", "mismatch"),
    ("short poses", lambda r: (r / "sequences/08/poses.txt").write_text(
        "".join((r / "sequences/08/poses.txt").read_text().splitlines(True)[:4])), "sequences/08/poses.txt", "layout"),
]


@pytest.mark.parametrize("name,plant,where,kind", FAULTS, ids=[f[0] for f in FAULTS])
def test_planted_fault_is_reported(copy: Path, name: str, plant: Callable[[Path], None], where: str,
                                   kind: str) -> None:
    assert not check_dataset(copy, depth_root=copy / "depth").problems  # the copy starts clean
    plant(copy)
    report = check_dataset(copy, depth_root=copy / "depth")
    hits = [p for p in report.errors if p.path == str(copy / where)]
    assert hits, f"{name}: nothing reported for {where}; got {[str(p) for p in report.problems]}"
    assert kind in {p.kind for p in hits}


def test_bad_targets_are_reported(copy: Path, clean: Path) -> None:
    labels = copy / "labels" / "08"
    labels.mkdir(parents=True)
    good = np.zeros((256, 256, 32), np.uint8)
    np.save(labels / "000000_1_1.npy", good)
    bad = good.copy()
    bad[0, 0, 0] = 20  # SemanticKITTI has classes 0..19 (+ 255)
    np.save(labels / "000005_1_1.npy", bad)
    np.save(labels / "000005_1_8.npy", np.zeros((16, 16, 2), np.uint8))  # wrong 1:8 shape
    report = check_dataset(copy, label_root=copy / "labels")
    by_path = {p.path: p for p in report.errors}
    assert by_path[str(labels / "000005_1_1.npy")].kind == "target"
    assert by_path[str(labels / "000005_1_8.npy")].kind == "target"
    assert by_path[str(labels / "000010_1_1.npy")].kind == "missing"
    assert str(labels / "000000_1_1.npy") not in by_path


def test_kitti360_masks_and_missing_camera(tmp_path: Path) -> None:
    root = tmp_path / "k360"
    drive = root / "data_2d_raw" / "2013_05_28_drive_0009_sync"
    vox = drive / "voxels"
    vox.mkdir(parents=True)
    io.write_voxel_mask(vox / "000000.bin", np.zeros((256, 256, 32), bool))
    io.write_voxel_label(vox / "000000.label", np.zeros((256, 256, 32), np.uint16))
    io.write_voxel_mask(vox / "000000.invalid", np.ones((256, 256, 32), bool), packed=False)  # SSCBench: unpacked
    io.write_image(drive / "image_00" / "data_rect" / "000000.png", np.zeros((4, 6, 3), np.uint8))
    report = check_dataset(root, "kitti_360")
    assert not report.errors  # unpacked .invalid is the KITTI-360 format; no .occluded needed
    assert [p.path for p in report.warnings] == [str(drive / "image_01" / "data_rect")]
    (vox / "000000.invalid").write_bytes(b"\2" * 2_097_152)  # not a 0/1 mask
    (drive / "image_00" / "data_rect" / "000000.png").unlink()
    report = check_dataset(root, "kitti_360")
    assert {(p.path, p.kind) for p in report.errors} == {(str(vox / "000000.invalid"), "format"),
                                                          (str(drive / "image_00/data_rect/000000.png"), "missing")}


def test_cli_exit_code_and_summary_on_faults(copy: Path, capsys: pytest.CaptureFixture) -> None:
    (copy / "sequences/08/image_2/000005.png").unlink()
    _truncate(copy / "sequences/08/voxels/000000.label")
    code, out = _check_cli([str(copy)], capsys)
    assert code == 1
    assert f"ERROR [missing] {copy / 'sequences/08/image_2/000005.png'}" in out
    assert f"ERROR [size] {copy / 'sequences/08/voxels/000000.label'}" in out
    assert "2 errors (1 missing, 1 size)" in out.splitlines()[-1]


def test_kitti360_drive_calib_pose_tables_and_default_label_root(tmp_path: Path) -> None:
    root = tmp_path / "k360"
    drive = root / "data_2d_raw" / "2013_05_28_drive_0006_sync"
    io.write_voxel_mask(drive / "voxels" / "000000.bin", np.zeros((256, 256, 32), bool))
    io.write_voxel_label(drive / "voxels" / "000000.label", np.zeros((256, 256, 32), np.uint16))
    io.write_voxel_mask(drive / "voxels" / "000000.invalid", np.zeros((256, 256, 32), bool), packed=False)
    for cam in ("image_00", "image_01"):
        io.write_image(drive / cam / "data_rect" / "000000.png", np.zeros((4, 6, 3), np.uint8))
    p2 = np.array([[110.0, 0, 136, 0], [0, 110, 47, 0], [0, 0, 1, 0]])
    p3 = p2.copy()
    p3[0, 3] = -66.0
    io.write_calib(drive / "calib.txt", {"P0": p2, "P1": p3, "P2": p2, "P3": p3, "Tr": np.eye(4)})
    io.write_indexed_poses(drive / "pose.txt", np.array([3, 8]), np.tile(np.eye(4), (2, 1, 1)), rows=3)
    io.write_indexed_poses(drive / "cam0_to_world.txt", np.array([3, 8]), np.tile(np.eye(4), (2, 1, 1)), rows=4)
    assert not check_dataset(root, "kitti_360").problems  # no preprocess/labels folder: targets not checked
    labels = root / "preprocess" / "labels" / drive.name
    labels.mkdir(parents=True)
    np.save(labels / "000000_1_1.npy", np.full((256, 256, 32), 19, np.uint8))  # KITTI-360 has classes 0..18
    (drive / "calib.txt").write_text((drive / "calib.txt").read_text().replace("P2: 1.1", "P2: x.1"))
    (drive / "pose.txt").write_text("3 1 0 0\n")  # 4 numbers, not index + 12
    (drive / "cam0_to_world.txt").write_text("8 " + " ".join(["0"] * 16) + "\n3 " + " ".join(["0"] * 16) + "\n")
    report = check_dataset(root, "kitti_360")
    assert {(p.path, p.kind) for p in report.errors} == {
        (str(labels / "000000_1_1.npy"), "target"),  # default label root <root>/preprocess/labels
        (str(drive / "calib.txt"), "calib"),
        (str(drive / "pose.txt"), "layout"),
        (str(drive / "cam0_to_world.txt"), "layout"),  # indices must increase
    }, [str(p) for p in report.problems]
    # an R0_rect line (9 numbers) next to the required keys is fine
    io.write_calib(drive / "calib.txt", {"P0": p2, "P1": p3, "P2": p2, "P3": p3, "Tr": np.eye(4)})
    (drive / "calib.txt").write_text("R0_rect: 1 0 0 0 1 0 0 0 1\n" + (drive / "calib.txt").read_text())
    assert str(drive / "calib.txt") not in {p.path for p in check_dataset(root, "kitti_360").problems}
