"""The synthetic world (`ssckit synth`): exact dataset layout, consistent sensors, determinism, and the readers,
preprocess and evaluate running on it. One small dataset is generated once per session (image scale 0.25)."""
from __future__ import annotations

import argparse
import filecmp
from pathlib import Path

import numpy as np
import pytest
import yaml

from ssckit.data import io
from ssckit.data.datasets import KITTI360, SemanticKITTI
from ssckit.data.datasets.kitti_360 import CAM0_TO_VELO
from ssckit.data.labels import SEMANTIC_KITTI
from ssckit.data.synth import colour_family, generate
from ssckit.data.synth.world import build_world
from ssckit.data.synth.writer import sequence_salt

ORIGIN = np.array([0.0, -25.6, -2.0])


@pytest.fixture(scope="module")
def root(synth_root: Path) -> Path:
    return synth_root


@pytest.fixture(scope="module")
def val(root: Path) -> SemanticKITTI:
    return SemanticKITTI(root, sequences=["08"], depth_root=root / "depth")


def _run(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


def test_layout_and_file_sizes(root: Path) -> None:
    seq = root / "sequences" / "08"
    assert len(io.read_poses(seq / "poses.txt")) == 11  # every index 0..10; SSC frames 0, 5, 10
    assert len(io.read_times(seq / "times.txt")) == 11
    for frame in ("000000", "000005", "000010"):
        assert (seq / "voxels" / f"{frame}.bin").stat().st_size == 262_144
        assert (seq / "voxels" / f"{frame}.invalid").stat().st_size == 262_144
        assert (seq / "voxels" / f"{frame}.occluded").stat().st_size == 262_144
        assert (seq / "voxels" / f"{frame}.label").stat().st_size == 4_194_304
        n_bytes = (seq / "velodyne" / f"{frame}.bin").stat().st_size
        assert n_bytes % 16 == 0 and n_bytes // 16 > 50_000  # a 64-beam sweep
        assert (seq / "labels" / f"{frame}.label").stat().st_size == n_bytes // 4
        assert (root / "depth" / "sequences" / "08" / f"{frame}.npy").is_file()
    assert sorted(p.name for p in (seq / "voxels").iterdir()) == sorted(
        f"{f}.{e}" for f in ("000000", "000005", "000010") for e in ("bin", "label", "invalid", "occluded"))
    # KITTI image sizes scaled by 0.25: 00 is 1241 x 376, 08 is 1226 x 370 (rounded half to even)
    assert io.read_image(root / "sequences" / "00" / "image_2" / "000000.png").shape == (94, 310, 3)
    assert io.read_image(seq / "image_3" / "000005.png").shape == (92, 306, 3)


def test_test_sequence_has_only_bin_voxels_and_reads_as_unlabelled(root: Path) -> None:
    seq = root / "sequences" / "11"
    assert sorted(p.name for p in (seq / "voxels").iterdir()) == ["000000.bin"]  # no .label / .invalid / .occluded
    assert not (seq / "labels").exists() and (seq / "velodyne" / "000000.bin").is_file()  # no point labels either
    assert (seq / "image_2" / "000000.png").is_file() and (seq / "image_3" / "000000.png").is_file()
    test = SemanticKITTI(root, split="test", sequences=["11"], depth_root=root / "depth")
    (f,) = test.frames
    assert f == ("11", "000000") and not test.has_labels(f)
    assert test.read_input_voxels(f).sum() > 1000 and test.read_depth(f).shape == test.read_image(f).shape[:2]
    assert test.read_calib("11")["P2"][0, 0] == pytest.approx(707.0912 * 0.25)  # 04-12 intrinsics (§1.6)


def test_calibration_is_scaled_kitti_stereo(root: Path) -> None:
    for seq, fx in (("00", 718.856), ("08", 707.0912)):
        calib = io.read_calib(root / "sequences" / seq / "calib.txt")
        assert calib["P2"][0, 0] == pytest.approx(fx * 0.25)
        baseline = (calib["P2"][0, 3] - calib["P3"][0, 3]) / calib["P2"][0, 0]
        assert baseline == pytest.approx(0.54)
        rot = calib["Tr"][:3, :3]  # velodyne (x fwd, y left, z up) -> camera (x right, y down, z fwd), ~identity
        assert np.allclose(rot @ np.array([1.0, 0, 0]), [0, 0, 1], atol=0.02)
        assert np.allclose(rot @ np.array([0, 1.0, 0]), [-1, 0, 0], atol=0.02)


def test_voxels_project_to_pixels_of_their_class_colour(val: SemanticKITTI) -> None:
    """Every occupied, visible voxel inside the frustum lands on a pixel of its class's colour family."""
    total = agree = 0
    classes: set[int] = set()
    for f in val.frames:
        target, image, depth = val.voxel_target(f), val.read_image(f), val.read_depth(f)
        calib = val.read_calib(f.sequence)
        idx = np.argwhere((target > 0) & (target < 255))
        cam = ((idx + 0.5) * 0.2 + ORIGIN) @ calib["Tr"][:3, :3].T + calib["Tr"][:3, 3]
        hom = cam @ calib["P2"][:, :3].T + calib["P2"][:, 3]  # the full P2: images are rendered from cam 2
        z = hom[:, 2]
        u = np.round(hom[:, 0] / np.maximum(z, 1e-6)).astype(int)
        v = np.round(hom[:, 1] / np.maximum(z, 1e-6)).astype(int)
        inside = (z > 0.5) & (u >= 0) & (u < depth.shape[1]) & (v >= 0) & (v < depth.shape[0])
        u, v, z, idx = u[inside], v[inside], z[inside], idx[inside]
        visible = np.abs(depth[v, u] - z) < np.maximum(0.3, 0.05 * z)  # not hidden behind something else
        cls = target[tuple(idx[visible].T)]
        family = colour_family(image[v[visible], u[visible]], SEMANTIC_KITTI.lut)
        total += len(cls)
        agree += int((family == cls).sum())
        classes |= set(np.unique(cls).tolist())
    assert total > 10_000
    assert len(classes) >= 8  # road, sidewalk, building, vegetation, car, ... are all seen
    assert agree / total > 0.9


def test_stereo_pair_has_the_kitti_baseline(val: SemanticKITTI) -> None:
    """image_3 is image_2 seen 0.54 m to the right: shifting by the disparity bf / depth aligns them."""
    f = val.frames[1]
    left, right = val.read_image(f, 2).astype(float), val.read_image(f, 3).astype(float)
    depth = val.read_depth(f)
    bf = 0.54 * val.read_calib(f.sequence)["P2"][0, 0]
    v, u = np.nonzero(depth < 30.0)
    u3 = np.round(u - bf / depth[v, u]).astype(int)
    ok = (u3 >= 0) & (u3 < left.shape[1])
    shifted = np.abs(left[v[ok], u[ok]] - right[v[ok], u3[ok]]).mean()
    unshifted = np.abs(left[v[ok], u[ok]] - right[v[ok], u[ok]]).mean()
    assert shifted < 0.5 * unshifted


def test_lidar_agrees_with_depth_voxels_and_bin(val: SemanticKITTI) -> None:
    f = val.frames[0]
    scan = val.read_scan(f)
    sem, inst = val.read_point_labels(f, len(scan))
    raw_grid = val.read_raw_labels(f)
    # .bin is the voxelisation of the scan (hand-rolled: floor((p - origin) / 0.2))
    idx = np.floor((scan[:, :3] - ORIGIN) / 0.2).astype(int)
    in_grid = ((idx >= 0) & (idx < [256, 256, 32])).all(axis=1)
    occ = np.zeros((256, 256, 32), bool)
    occ[tuple(idx[in_grid].T)] = True
    assert np.array_equal(occ, val.read_input_voxels(f))
    # point labels match the voxel labels where the points fall
    at = raw_grid[tuple(idx[in_grid].T)]
    labelled = at > 0
    assert (at[labelled] == sem[in_grid][labelled]).mean() > 0.9
    assert inst[np.isin(sem, [10, 252])].min() > 0 and inst[sem == 40].max() == 0  # things have instance ids
    # the stereo depth agrees with the LiDAR where both see (median error well under a voxel)
    calib, depth = val.read_calib(f.sequence), val.read_depth(f)
    cam = scan[:, :3] @ calib["Tr"][:3, :3].T + calib["Tr"][:3, 3]
    hom = cam @ calib["P2"][:, :3].T + calib["P2"][:, 3]
    z = hom[:, 2]
    near = (z > 2) & (z < 30)
    u = np.round(hom[near, 0] / z[near]).astype(int)
    v = np.round(hom[near, 1] / z[near]).astype(int)
    ok = (u >= 0) & (u < depth.shape[1]) & (v >= 0) & (v < depth.shape[0])
    assert ok.sum() > 500
    assert np.median(np.abs(depth[v[ok], u[ok]] - z[near][ok])) < 0.2


def test_invalid_and_occluded_masks(val: SemanticKITTI) -> None:
    for f in val.frames:
        invalid, occluded = val.read_invalid(f), val.read_occluded(f)
        occupied_input = val.read_input_voxels(f)
        assert np.all(occluded >= invalid) and np.all(occluded >= occupied_input)  # superset, as in the real data
        assert not (invalid & occupied_input).any()
        assert 0.1 < invalid.mean() < 0.8
        raw = val.read_raw_labels(f)
        assert not (raw[invalid] > 0).any()  # only observed voxels carry labels
        assert set(np.unique(raw).tolist()) <= set(SEMANTIC_KITTI.learning_map)


def test_consecutive_frames_overlap(root: Path) -> None:
    """Poses are cam0 poses; the LiDAR moves forward 2-8 m between SSC frames, so the grids overlap."""
    calib = io.read_calib(root / "sequences" / "00" / "calib.txt")
    poses = io.read_poses(root / "sequences" / "00" / "poses.txt")
    tr = calib["Tr"]
    lidar = np.linalg.inv(tr) @ poses @ tr  # LiDAR pose i in LiDAR frame 0
    step = lidar[5::5, :3, 3] - lidar[:-5:5, :3, 3]
    assert np.all(step[:, 0] > 2.0) and np.all(step[:, 0] < 8.0)
    assert np.all(np.abs(step[:, 1]) < 1.0)


def test_same_seed_same_bytes_and_frames_independent(root: Path, tmp_path: Path) -> None:
    generate(tmp_path, frames=1, seed=0, sequences=["08"], image_scale=0.25)
    a, b = root / "sequences" / "08", tmp_path / "sequences" / "08"
    for rel in ("image_2/000000.png", "image_3/000000.png", "velodyne/000000.bin", "labels/000000.label",
                "voxels/000000.bin", "voxels/000000.label", "voxels/000000.invalid", "voxels/000000.occluded",
                "calib.txt"):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    assert filecmp.cmp(root / "depth/sequences/08/000000.npy", tmp_path / "depth/sequences/08/000000.npy",
                       shallow=False)
    assert (b / "poses.txt").read_text().splitlines()[0] == (a / "poses.txt").read_text().splitlines()[0]
    salt = sequence_salt("semantic_kitti", "08")
    w0, w1 = build_world(0, salt, 30), build_world(1, salt, 30)  # another seed, another world
    assert len(w0.prims) != len(w1.prims) or not np.array_equal(w0.prims.centre, w1.prims.centre)


def test_kitti360_layout_via_cli(tmp_path: Path) -> None:
    from ssckit.commands import check_data, synth

    out = tmp_path / "k360"
    assert _run(synth, [str(out), "--dataset", "kitti_360", "--sequences", "0009", "--frames", "2",
                        "--image-scale", "0.2", "--seed", "3"]) == 0
    drive = out / "data_2d_raw" / "2013_05_28_drive_0009_sync"
    # pose tables keyed by frame index (datasets.md §4): index + 3x4 vehicle -> world, index + 4x4 cam0 -> world
    assert [len(line.split()) for line in (drive / "pose.txt").read_text().splitlines()] == [13] * 6
    assert [len(line.split()) for line in (drive / "cam0_to_world.txt").read_text().splitlines()] == [17] * 6
    index, cam0_to_world = io.read_indexed_poses(drive / "cam0_to_world.txt", rows=4)
    pose_index, vehicle = io.read_indexed_poses(drive / "pose.txt", rows=3)
    assert index.tolist() == pose_index.tolist() == [0, 1, 2, 3, 4, 5]
    assert np.allclose(cam0_to_world[0], np.eye(4), atol=1e-9)  # world = cam0 of frame 0
    velo_to_cam0 = np.linalg.inv(CAM0_TO_VELO)
    assert np.allclose(vehicle, cam0_to_world @ velo_to_cam0, atol=1e-6)  # vehicle frame = velodyne frame
    assert 2.0 < cam0_to_world[5][2, 3] < 8.0  # 5 frames later the camera is 2-8 m further along its optical axis
    assert (drive / "voxels" / "000000.invalid").stat().st_size == 2_097_152  # one byte per voxel
    assert not (drive / "voxels" / "000000.occluded").exists()
    assert (out / "depth" / "2013_05_28_drive_0009_sync" / "000000.npy").is_file()
    ds = KITTI360(out, split="test", depth_root=out / "depth")
    f = ds.frames[0]
    assert ds.read_image(f, 0).shape == (75, 282, 3) and ds.read_image(f, 1).shape == (75, 282, 3)
    assert ds.read_depth(f).shape == (75, 282)
    target = ds.voxel_target(f)
    assert target.max() == 255 and {7, 9, 11} <= set(np.unique(target).tolist())  # road, sidewalk, building
    assert (target == 255).mean() > 0.5  # SSCBench: most voxels were never reached by the LiDAR
    assert _run(check_data, [str(out), "--dataset", "kitti_360", "--depth-root", str(out / "depth")]) == 0


def test_preprocess_and_evaluate_run_on_synth(root: Path, val: SemanticKITTI, tmp_path: Path) -> None:
    from ssckit.commands import evaluate, preprocess
    from ssckit.submission import write_prediction_label

    labels = tmp_path / "labels"
    assert _run(preprocess, [str(root), "--out", str(labels), "--sequences", "08", "--workers", "1",
                             "--no-progress"]) == 0
    ds = SemanticKITTI(root, sequences=["08"], label_root=labels)
    for f in ds.frames:
        assert np.array_equal(ds.read_target(f), ds.voxel_target(f))
        assert ds.read_target(f, "1_8").shape == (32, 32, 4)
    pred_root = tmp_path / "pred"
    for f in ds.frames:  # a perfect prediction (ignored voxels written as empty)
        t = ds.voxel_target(f)
        write_prediction_label(pred_root, f, np.where(t == 255, 0, t), SEMANTIC_KITTI)
    out = tmp_path / "scores.yaml"
    assert _run(evaluate, ["--pred", str(pred_root), "--data", str(root), "--sequences", "08", "--out", str(out)]) == 0
    scores = yaml.safe_load(out.read_text())
    assert scores["iou_completion"] == pytest.approx(1.0)
    assert scores["iou_road"] == pytest.approx(1.0) and scores["iou_building"] == pytest.approx(1.0)


def test_preview_renderers_and_picture(root: Path, tmp_path: Path) -> None:
    from ssckit.data.synth.preview import bird_eye, save_preview, voxel_render

    palette = np.zeros((256, 3))
    palette[9], palette[13] = (255, 0, 255), (255, 200, 0)
    target = np.zeros((2, 2, 3), np.uint8)
    target[0, 0] = (0, 13, 0)
    target[0, 1] = 255
    target[1, 0] = (9, 0, 0)
    top = bird_eye(target, palette)  # rows: x far -> near, cols: y left -> right
    assert top[0, 0].tolist() == [255, 255, 255] and top[0, 1].tolist() == [255, 0, 255]
    assert top[1, 0].tolist() == [150, 150, 150] and top[1, 1].tolist() == [255, 200, 0]
    one = np.zeros((4, 4, 2), np.uint8)
    one[1, 2, 1] = 13  # top layer: full brightness inside the splat, 0.7 on its border
    colours = {tuple(c) for c in voxel_render(one, palette, width=60, height=40).reshape(-1, 3).tolist()}
    assert colours == {(255, 255, 255), (255, 200, 0), (178, 140, 0)}
    out = save_preview(root, tmp_path / "frame.png", sequence="08")
    assert 10_000 < out.stat().st_size < 300_000 and io.read_image(out).shape[2] == 3
