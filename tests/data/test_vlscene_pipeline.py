"""VLScene stereo pipeline on tiny SemanticKITTI-layout trees written with the io writers; expected geometry and
LiDAR depth are computed by hand / by an independent per-point loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssckit.config import DataConfig
from ssckit.data import io
from ssckit.data.datasets import SemanticKITTI
from ssckit.data.pipelines import get_pipeline
from ssckit.data.pipelines.vlscene import VLScenePipeline
from ssckit.engine.datamodule import collate_samples
from ssckit.errors import DataError, SsckitError
from ssckit.models.teachers import vlscene_left_image, write_cache_entry

P2 = np.array([[100.0, 0, 150, 0], [0, 100, 50, 0], [0, 0, 1, 0]])
P3 = np.array([[100.0, 0, 150, -54], [0, 100, 50, 0], [0, 0, 1, 0]])  # baseline 0.54 m
TR = np.array([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])  # velo (x, y, z) -> cam (-y, -z, x)
# velodyne points and raw lidarseg ids: two on one ray (10 m wins), behind, right of the image, above the crop,
# one 3.5 px below the crop top
POINTS = np.array([[10, 1, 0.5], [20, 2, 1], [-5, 0, 0], [10, -20, 0], [10, 0, 5], [10, 0, 3]], dtype=np.float32)
RAW = np.array([10, 40, 10, 10, 52, 1], dtype=np.uint16)
LEFT, RIGHT = (200, 100, 50), (10, 20, 30)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _write_tree(root, size=(310, 94), frames=("000000", "000005"), scans=True, extra_points=None):
    seq = root / "sequences" / "00"
    io.write_calib(seq / "calib.txt", {"P0": P2, "P1": P2, "P2": P2, "P3": P3, "Tr": TR})
    raw = np.zeros((256, 256, 32), np.uint16)
    raw[1, 2, 3] = 10  # car
    invalid = np.zeros((256, 256, 32), bool)
    invalid[5, 5, 5] = True
    points = POINTS if extra_points is None else np.concatenate([POINTS, extra_points])
    labels = np.concatenate([RAW, np.full(len(points) - len(POINTS), 40, np.uint16)])
    for f in frames:
        io.write_image(seq / "image_2" / f"{f}.png", np.full((size[1], size[0], 3), LEFT, np.uint8))
        io.write_image(seq / "image_3" / f"{f}.png", np.full((size[1], size[0], 3), RIGHT, np.uint8))
        io.write_voxel_mask(seq / "voxels" / f"{f}.bin", raw > 0)
        io.write_voxel_label(seq / "voxels" / f"{f}.label", raw)
        io.write_voxel_mask(seq / "voxels" / f"{f}.invalid", invalid)
        io.write_voxel_mask(seq / "voxels" / f"{f}.occluded", np.zeros_like(invalid))
        if scans:
            io.write_scan(seq / "velodyne" / f"{f}.bin", np.concatenate([points, np.ones((len(points), 1))], 1))
            io.write_point_labels(seq / "labels" / f"{f}.label", labels)
    return SemanticKITTI(root, sequences=["00"])


def _cfg(**kw) -> DataConfig:
    return DataConfig(crop_size=[256, 64], use_depth=False, **kw)


def test_images_calibration_and_target(tmp_path):
    reader = _write_tree(tmp_path)
    assert get_pipeline("vlscene") is VLScenePipeline
    s = VLScenePipeline(reader, _cfg(), "val")(reader.frames[0])
    # 310 x 94 -> s = 256 / 310, 256 x int(77.63) = 77 rows, bottom 64 kept: y0 = 13
    sc = 256 / 310
    np.testing.assert_allclose(s["post_rot"], np.diag([sc, sc, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(s["post_tran"], [0.0, -13.0, 0.0])
    np.testing.assert_allclose(s["cam_K"], [[100 * sc, 0, 150 * sc], [0, 100 * sc, 50 * sc - 13], [0, 0, 1]],
                               rtol=1e-6)
    np.testing.assert_allclose(s["cam_P2"], P2)
    np.testing.assert_allclose(s["cam_P3"], P3)
    np.testing.assert_allclose(s["cam_pose"], TR)
    assert s["fx_baseline"] == pytest.approx(54.0)
    assert s["img"].shape == s["img_right"].shape == (3, 64, 256) and s["img"].dtype == np.float32
    np.testing.assert_allclose(s["img"][:, 10, 20], (np.array(LEFT) / 255 - MEAN) / STD, atol=1e-5)
    np.testing.assert_allclose(s["img_right"][:, 63, 255], (np.array(RIGHT) / 255 - MEAN) / STD, atol=1e-5)
    left = io.read_image(reader.image_path(reader.frames[0]))
    np.testing.assert_array_equal(s["img"], vlscene_left_image(left, 256, 64))  # = the cached-teacher input
    assert s["target"].shape == (256, 256, 32) and s["target"][1, 2, 3] == 1 and s["target"][5, 5, 5] == 255
    assert s["target"].sum() == 1 + 255 and "lidar_depth" not in s and "points" not in s  # no LiDAR at val
    assert "target" not in VLScenePipeline(reader, _cfg(grid_scale=4), "predict")(reader.frames[0])
    assert VLScenePipeline(reader, _cfg(grid_scale=4), "val")(reader.frames[0])["target"].shape == (64, 64, 8)


def test_short_images_get_black_rows_on_top(tmp_path):
    reader = _write_tree(tmp_path, size=(320, 60))  # s = 0.8 -> 256 x 48: 16 black rows above (KITTI-360 case)
    s = VLScenePipeline(reader, _cfg(), "val")(reader.frames[0])
    np.testing.assert_allclose(s["post_tran"], [0.0, 16.0, 0.0])
    np.testing.assert_allclose(s["img"][:, :16], np.broadcast_to((-MEAN / STD)[:, None, None], (3, 16, 256)),
                               atol=1e-5)
    np.testing.assert_allclose(s["img"][:, 16:, :], np.broadcast_to(((np.array(LEFT) / 255 - MEAN) / STD)
                                                                    [:, None, None], (3, 48, 256)), atol=1e-5)


def _expected_depth(points, width=256, height=64, sc=256 / 310, top=13):
    """Independent per-point projection: P2 . Tr . p, pixel' = s * pixel - (0, top), nearest return wins."""
    depth = np.zeros((height, width))
    fov = []
    for i, p in enumerate(points.astype(np.float64)):
        x, y, z = P2 @ (TR @ np.append(p, 1.0))
        if z <= 0:
            continue
        u, v = sc * x / z, sc * y / z - top
        if 0 <= u <= width - 1 and 0 <= v <= height - 1:
            fov.append(i)
            r, c = int(np.round(v)), int(np.round(u))
            depth[r, c] = z if depth[r, c] == 0 else min(depth[r, c], z)
    return depth, fov


def test_lidar_depth_and_points(tmp_path):
    rng = np.random.default_rng(0)
    extra = np.stack([rng.uniform(-2, 40, 300), rng.uniform(-20, 20, 300), rng.uniform(-3, 3, 300)], 1)
    reader = _write_tree(tmp_path, extra_points=extra.astype(np.float32))
    pipe = VLScenePipeline(reader, _cfg(max_points=400), "train")
    s = pipe(reader.frames[0])
    # hand-checked: the ray (10, 1, 0.5) / (20, 2, 1) hits pixel (u, v) = (140 s, 45 s - 13) -> (116, 24)
    assert s["lidar_depth"][24, 116] == pytest.approx(10.0)
    assert s["lidar_depth"][4, 124] == pytest.approx(10.0)  # (10, 0, 3): (150 s, 20 s - 13) = (123.9, 3.5)
    want, fov = _expected_depth(np.concatenate([POINTS, extra]))
    assert fov[:3] == [0, 1, 5]  # behind / right of the image / above the crop are dropped
    np.testing.assert_allclose(s["lidar_depth"], want, rtol=1e-5)
    n = len(fov)
    assert s["point_mask"].sum() == n and s["point_mask"][:n].all() and s["points"].shape == (400, 3)
    np.testing.assert_allclose(s["points"][:n], np.concatenate([POINTS, extra])[fov], rtol=1e-6)
    np.testing.assert_array_equal(s["point_labels"][:3], [1, 9, 0])  # car, road, outlier -> 0 (ignored)
    assert (s["point_labels"][3:n] == 9).all() and (s["point_labels"][n:] == 0).all()
    batch = collate_samples([s, pipe(reader.frames[1])])
    assert batch["points"].shape == (2, 400, 3) and batch["lidar_depth"].shape == (2, 64, 256)
    assert batch["img_right"].shape == (2, 3, 64, 256) and batch["fx_baseline"].shape == (2,)

    small = VLScenePipeline(reader, _cfg(max_points=5), "train")  # subsampled, the same subset every time
    a, b = small(reader.frames[0]), small(reader.frames[0])
    assert a["point_mask"].all() and np.array_equal(a["points"], b["points"])
    assert {tuple(p) for p in a["points"]} <= {tuple(p) for p in np.concatenate([POINTS, extra])[fov].astype(
        np.float32)}


def test_no_scans_no_lidar_keys_and_flip_rejected(tmp_path):
    reader = _write_tree(tmp_path, scans=False)
    s = VLScenePipeline(reader, _cfg(), "train")(reader.frames[0])
    assert not {"lidar_depth", "points", "point_labels", "point_mask"} & set(s)
    with pytest.raises(SsckitError, match="flip_prob"):
        VLScenePipeline(reader, _cfg(flip_prob=0.5), "train")


def test_teacher_cache_outputs_reach_the_model(tmp_path):
    from ssckit.models.segmentors.vlscene import VLScene, vlscene_config

    reader = _write_tree(tmp_path / "data", scans=False)
    cfg = _cfg(teacher_cache_root=str(tmp_path / "cache"))
    feats = np.random.default_rng(1).standard_normal((512, 8, 32)).astype(np.float16)
    logits = np.random.default_rng(2).standard_normal((21, 8, 32)).astype(np.float16)
    write_cache_entry(tmp_path / "cache" / "00" / "000005.npz", feats, logits)  # <root>/<sequence>/<frame>.npz
    pipe = VLScenePipeline(reader, cfg, "train")
    s = pipe(reader.frames[1])
    np.testing.assert_array_equal(s["vl_feat"], feats)
    np.testing.assert_array_equal(s["vl_logits"], logits)
    assert "vl_feat" not in VLScenePipeline(reader, cfg, "val")(reader.frames[1])  # training only
    assert "vl_feat" not in VLScenePipeline(reader, _cfg(), "train")(reader.frames[1])  # no root: no teacher keys
    with pytest.raises(DataError, match="000000.npz"):  # frame 000000 was never cached
        pipe(reader.frames[0])

    # the batch outputs are what the model distils from; the "cache" teacher without a model-side root is never
    # built (building it would raise)
    batch = collate_samples([s])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = VLScene(vlscene_config("tiny", vl_channels=512, teacher="cache")).train()
        out = model(batch)
    finally:
        torch.set_num_threads(before)
    assert not model._teacher_built
    torch.testing.assert_close(out["kd_teacher_logits"], torch.from_numpy(logits.astype(np.float32))[None])
    assert out["kd_target"].shape == (1, 16, 8, 32)


def test_synthetic_data_through_the_tiny_model(tmp_path):
    from ssckit.cli import main
    from ssckit.models.segmentors.vlscene import VLScene, vlscene_config

    assert main(["synth", str(tmp_path), "--frames", "2", "--sequences", "00", "--image-scale", "0.25"]) == 0
    reader = SemanticKITTI(tmp_path, sequences=["00"])
    pipe = VLScenePipeline(reader, _cfg(grid_scale=4, max_points=4096), "train")
    batch = collate_samples([pipe(f) for f in reader.frames[:2]])
    assert batch["point_mask"].sum() > 100 and (batch["lidar_depth"] > 0).sum() > 100
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = VLScene(vlscene_config("tiny")).train()
        losses = model.loss(model(batch), batch)
    finally:
        torch.set_num_threads(before)
    assert {"depth", "point_ce", "kd_feat"} <= set(losses) and torch.isfinite(losses["total"])


def test_real_frame_points_land_in_occupied_voxels(real_root, tmp_path):
    """Sequence 08 / 001000: the LiDAR points of the left FOV, taken as the point-head supervision, fall into voxels
    that the (v1.0-shifted) input occupancy marks as occupied; the depth map has one return per FOV pixel."""
    import os

    seq = tmp_path / "sequences" / "08"
    seq.mkdir(parents=True)
    for name in ("calib.txt", "velodyne", "labels", "voxels"):
        os.symlink(real_root / "sequences" / "08" / name, seq / name)
    for cam in (2, 3):  # the sample has no images; only their size (seq 08: 1226 x 370) matters here
        io.write_image(seq / f"image_{cam}" / "001000.png", np.zeros((370, 1226, 3), np.uint8))
    reader = SemanticKITTI(tmp_path, sequences=["08"], v10_z_shift=True)
    frame = reader.frames[0]
    pipe = VLScenePipeline(reader, DataConfig(crop_size=[1280, 384], use_depth=False), "train")
    sc = 1280 / 1226  # 1280 x int(386.3) = 386 rows -> y0 = 2
    calib = reader.read_calib("08")
    out = pipe.lidar(frame, calib["P2"], calib["Tr"], np.diag([sc, sc, 1.0]), np.array([0.0, -2.0, 0.0]))
    n = int(out["point_mask"].sum())
    assert 15_000 < n < 30_000 and (out["lidar_depth"] > 0).sum() > 0.95 * n
    pts = out["points"][:n]
    idx = np.floor((pts - np.array([0.0, -25.6, -2.0])) / 0.2).astype(int)
    inside = ((idx >= 0) & (idx < np.array([256, 256, 32]))).all(1)
    occupied = reader.read_input_voxels(frame)[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
    assert inside.sum() > 0.8 * n and occupied.mean() > 0.99
    labels = out["point_labels"][:n]
    assert (labels == 9).sum() > 0.1 * n and labels.max() < 20  # road is the most common FOV class
