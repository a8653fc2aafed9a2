"""ssckit.vis and ``ssckit render``: pixels checked against projections computed here, hand-made error codes, the
legend's entries, and the CLI on a tiny dataset tree written with the io writers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssckit import cli
from ssckit.data.io import GRID, write_calib, write_image, write_voxel_label, write_voxel_mask
from ssckit.data.labels import SEMANTIC_KITTI
from ssckit.vis.figure import (ERROR_FALSE_NEGATIVE, ERROR_FALSE_POSITIVE, ERROR_WRONG_CLASS, classes_present,
                               error_codes, frame_figure, render_panels)
from ssckit.vis.voxels import Camera, exposed_faces, face_shades, render_voxels

CAR, ROAD, BUILDING = 1, 9, 13
CAR_RGB = np.array(SEMANTIC_KITTI.palette[CAR], float)  # (100, 150, 245)
WHITE = np.array([255, 255, 255])

# a small grid: x 0..8 m, y -3.2..3.2 m, z -1.6..1.6 m; camera at the world origin looking along +x
SHAPE, VS, ORIGIN = (40, 32, 16), 0.2, (0.0, -3.2, -1.6)
W, H = 160, 80
K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 39.5], [0.0, 0.0, 1.0]])
TR = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
BOX = (slice(20, 26), slice(14, 20), slice(6, 11))  # x 4..5.2, y -0.4..0.8, z -0.4..0.6 m (off-centre)


def _box_pixels(box: tuple[slice, slice, slice]) -> tuple[float, float, float, float]:
    """(u_min, u_max, v_min, v_max) of a box's 8 projected corners: u = 79.5 - 100 y / x, v = 39.5 - 100 z / x."""
    xs, ys, zs = [(ORIGIN[a] + VS * s.start, ORIGIN[a] + VS * s.stop) for a, s in enumerate(box)]
    us = [79.5 - 100 * y / x for x in xs for y in ys]
    vs = [39.5 - 100 * z / x for x in xs for z in zs]
    return min(us), max(us), min(vs), max(vs)


def _is_hue(pixels: np.ndarray, rgb: np.ndarray, tol: float = 0.04) -> np.ndarray:
    """Whether each pixel (..., 3) is a darkened copy of ``rgb`` (same channel ratios)."""
    p = pixels.astype(float)
    peak = np.maximum(p.max(-1, keepdims=True), 1.0)
    return (np.abs(p / peak - rgb / rgb.max()) < tol).all(-1) & (peak[..., 0] > 40)


def _camera_panel(gt=None, pred=None, scene: int = 0) -> np.ndarray:
    _, rows = render_panels(None, gt, pred, SEMANTIC_KITTI, K, TR, views=("camera",), panel_width=W,
                            voxel_size=VS, origin=ORIGIN, image_size=(W, H))
    return rows[0][scene].rgb


def test_car_box_projects_where_computed():
    gt = np.zeros(SHAPE, np.uint8)
    gt[BOX] = CAR
    img = _camera_panel(gt)
    assert img.shape == (H, W, 3)
    u0, u1, v0, v1 = _box_pixels(BOX)  # 59.5, 89.5, 24.5, 49.5
    uu, vv = np.meshgrid(np.arange(W), np.arange(H))
    inner = (uu > u0 + 1) & (uu < u1 - 1) & (vv > v0 + 1) & (vv < v1 - 1)
    outer = (uu < u0 - 1) | (uu > u1 + 1) | (vv < v0 - 1) | (vv > v1 + 1)
    assert inner.sum() > 500
    assert _is_hue(img[inner], CAR_RGB).all()
    assert (img[outer] == WHITE).all()
    # shaded, not flat: the visible (-x) face is darker than the palette colour
    assert img[inner].max() < 245


def test_resized_camera_keeps_pixel_centres():
    cam = Camera(K, TR, W, H).resized(2.0)
    uv, z = cam.project(np.array([[4.0, -0.6, 0.6]]))
    u_full, v_full = 79.5 + 100 * 0.6 / 4, 39.5 - 100 * 0.6 / 4
    np.testing.assert_allclose(uv[0], [(u_full + 0.5) * 2 - 0.5, (v_full + 0.5) * 2 - 0.5])
    assert (cam.width, cam.height) == (2 * W, 2 * H) and z[0] == pytest.approx(4.0)


def test_depth_and_occlusion():
    gt = np.zeros(SHAPE, np.uint8)
    gt[35, :, :] = BUILDING  # wall at x = 7.0 m, covering the whole view
    gt[BOX] = CAR
    out = render_voxels(gt, _palette(), Camera(K, TR, W, H), VS, ORIGIN)
    u0, u1, v0, v1 = _box_pixels(BOX)
    assert out.depth[39, 79] == pytest.approx(4.0, abs=1e-3)  # car's front face, x = 4.0
    assert out.voxel[39, 79] == np.ravel_multi_index((20, 16, 8), SHAPE)  # ray hits y = z = 0.02 m at x = 4
    assert out.depth[20, 40] == pytest.approx(7.0, abs=1e-3)  # wall: u 34..125, v 17..62
    assert _is_hue(out.rgb[int(v0) + 3: int(v1) - 2, int(u0) + 3: int(u1) - 2], CAR_RGB).all()
    building = np.array(SEMANTIC_KITTI.palette[BUILDING], float)
    assert _is_hue(out.rgb[18:23, 36:123], building).all()  # above the car, in front of nothing else
    assert (out.rgb[:, :30] == WHITE).all() and np.isinf(out.depth[:, :30]).all() and (out.voxel[:, :30] == -1).all()


def _palette() -> np.ndarray:
    pal = np.zeros((256, 3), np.uint8)
    pal[: SEMANTIC_KITTI.num_classes] = SEMANTIC_KITTI.palette
    return pal


def test_empty_and_ignored_grids_draw_nothing():
    empty = np.zeros(SHAPE, np.uint8)
    ignored = np.full(SHAPE, 255, np.uint8)
    for grid in (empty, ignored):
        _, rows = render_panels(None, grid, None, SEMANTIC_KITTI, K, TR, views=("camera", "oblique", "bev"),
                                panel_width=W, voxel_size=VS, origin=ORIGIN, image_size=(W, H))
        for row in rows:
            assert (row[0].rgb == WHITE).all()


def test_ignored_voxels_do_not_hide_the_car():
    gt = np.zeros(SHAPE, np.uint8)
    gt[BOX] = CAR
    gt[10:12, :, :] = 255  # an ignored wall between camera and car
    img = _camera_panel(gt)
    u0, u1, v0, v1 = _box_pixels(BOX)
    assert _is_hue(img[int(v0) + 3: int(v1) - 2, int(u0) + 3: int(u1) - 2], CAR_RGB).all()
    assert (img[:int(v0) - 2] == WHITE).all()


def test_exposed_faces_and_culling():
    occ = np.zeros((4, 3, 3), bool)
    occ[1, 1, 1] = True
    idx, dirs = exposed_faces(occ)
    assert len(idx) == 6 and sorted(dirs.tolist()) == [0, 1, 2, 3, 4, 5]
    occ[2, 1, 1] = True  # two voxels along x share one hidden face pair: 12 - 2 = 10
    idx, dirs = exposed_faces(occ)
    assert len(idx) == 10
    assert not ((dirs == 0) & (idx[:, 0] == 1)).any() and not ((dirs == 1) & (idx[:, 0] == 2)).any()
    occ[:] = False
    occ[3, 0, 0] = True  # on the grid border: faces towards the outside count
    assert len(exposed_faces(occ)[0]) == 6
    # viewer far along +x (continuous voxel coordinates): only the +x face of a lone voxel faces it
    occ[:] = False
    occ[1, 1, 1] = True
    idx, dirs = exposed_faces(occ, viewpoint=np.array([100.0, 1.5, 1.5]))
    assert dirs.tolist() == [0] and idx.tolist() == [[1, 1, 1]]
    idx, dirs = exposed_faces(occ, viewpoint=np.array([100.0, 100.0, 100.0]))
    assert sorted(dirs.tolist()) == [0, 2, 4]


def test_lambertian_shades():
    np.testing.assert_allclose(face_shades(light=(0, 0, 1), ambient=0.5), [0.5, 0.5, 0.5, 0.5, 1.0, 0.5])
    s = 0.6 / np.sqrt(0.36 + 0.64)
    np.testing.assert_allclose(face_shades(light=(-0.6, 0, 0.8), ambient=0.2),
                               [0.2, 0.2 + 0.8 * s, 0.2, 0.2, 0.2 + 0.8 * 0.8, 0.2])


def test_error_codes_by_hand():
    gt = np.array([0, 1, 1, 9, 255, 0, 9], np.uint8).reshape(1, 1, 7)
    pred = np.array([0, 1, 9, 0, 1, 9, 255], np.uint8).reshape(1, 1, 7)
    expected = [0, 1, ERROR_WRONG_CLASS, ERROR_FALSE_NEGATIVE, 0, ERROR_FALSE_POSITIVE, ERROR_FALSE_NEGATIVE]
    assert error_codes(gt, pred).reshape(-1).tolist() == expected


def test_errors_panel_colours_planted_mistakes():
    gt = np.zeros(SHAPE, np.uint8)
    pred = np.zeros(SHAPE, np.uint8)
    left = (slice(20, 22), slice(22, 26), slice(7, 9))  # y +1.2..2.0 m: left of the image centre
    right = (slice(20, 22), slice(6, 10), slice(7, 9))  # y -2.0..-1.2 m: right
    mid = (slice(20, 22), slice(14, 18), slice(7, 9))
    pred[left] = CAR  # false positive
    gt[right] = CAR  # false negative
    gt[mid] = pred[mid] = CAR  # correct
    errors = _camera_panel(gt, pred, scene=2)
    centre = {}
    for name, box in (("fp", left), ("fn", right), ("ok", mid)):
        u0, u1, v0, v1 = _box_pixels(box)
        centre[name] = errors[int(round((v0 + v1) / 2)), int(round((u0 + u1) / 2))].astype(float)
    r, g, b = centre["fp"]
    assert r > 2 * g and r > 2 * b  # red-ish
    r, g, b = centre["fn"]
    assert b > 2 * r and b > 1.5 * g  # blue-ish
    muted = 0.4 * CAR_RGB + 0.6 * 205  # the car colour blended 60 % into light grey: (163, 183, 221)
    assert _is_hue(centre["ok"][None], muted, tol=0.03).all()
    assert not _is_hue(centre["ok"][None], CAR_RGB, tol=0.03).any()


def test_legend_lists_exactly_the_classes_present(tmp_path):
    gt = np.zeros(SHAPE, np.uint8)
    gt[BOX] = CAR
    gt[:, :, 0] = ROAD
    gt[30:, :, :] = 255
    pred = np.zeros(SHAPE, np.uint8)
    pred[:, :, 0] = ROAD
    pred[25:27, 20:30, 1:9] = BUILDING
    assert classes_present(SEMANTIC_KITTI, gt, pred) == [CAR, ROAD, BUILDING]
    image = np.full((H, W, 3), 90, np.uint8)
    fig = frame_figure(image, gt, pred, SEMANTIC_KITTI, K, TR, panel_width=W, voxel_size=VS, origin=ORIGIN)
    legends = {lg.get_title().get_text(): [t.get_text() for t in lg.get_texts()] for lg in fig.legends}
    assert legends["classes present"] == ["car", "road", "building"]
    assert len([k for k in legends if k.startswith("errors")]) == 1
    fig_gt = frame_figure(None, gt, None, SEMANTIC_KITTI, K, TR, panel_width=W, voxel_size=VS, origin=ORIGIN)
    legends = {lg.get_title().get_text(): [t.get_text() for t in lg.get_texts()] for lg in fig_gt.legends}
    assert legends == {"classes present": ["car", "road"]}  # 255 is not a class; no errors without a prediction


# --- CLI -------------------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _render_command(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"render": "ssckit.commands.render"})


@pytest.fixture()
def tree(tmp_path):
    """SemanticKITTI sequence 08 with frames 000000 (image, .label prediction) and 000005 (no image, .npy
    prediction); GT: a car box at x 10..14 m in front of the camera, road below, one invalid voxel."""
    data, pred = tmp_path / "data", tmp_path / "pred"
    seq = data / "sequences" / "08"
    raw = np.zeros(GRID, np.uint16)
    raw[50:70, 120:136, 9:16] = 10  # car (raw 10) ahead, camera-high
    raw[:, :, 8] = 40  # road (raw 40)
    invalid = np.zeros(GRID, bool)
    invalid[0, 0, 0] = True
    for frame in ("000000", "000005"):
        write_voxel_mask(seq / "voxels" / f"{frame}.bin", raw > 0)
        write_voxel_label(seq / "voxels" / f"{frame}.label", raw)
        write_voxel_mask(seq / "voxels" / f"{frame}.invalid", invalid)
    p2 = np.zeros((3, 4))
    p2[:, :3] = [[200.0, 0.0, 159.5], [0.0, 200.0, 39.5], [0.0, 0.0, 1.0]]
    write_calib(seq / "calib.txt", {"P0": p2, "P1": p2, "P2": p2, "P3": p2, "Tr": TR})
    write_image(seq / "image_2" / "000000.png", np.full((80, 320, 3), 60, np.uint8))
    pred_raw = raw.copy()
    pred_raw[pred_raw == 10] = 252  # moving car -> car
    write_voxel_label(pred / "sequences" / "08" / "predictions" / "000000.label", pred_raw)
    learning = SEMANTIC_KITTI.lut[raw]
    np.save(pred / "sequences" / "08" / "predictions" / "000005.npy", learning)
    return data, pred


def _main(*argv: str) -> int:
    return cli.main(["render", *argv])


def test_cli_writes_one_png_per_frame(tree, tmp_path, capsys):
    from PIL import Image

    data, pred = tree
    out = tmp_path / "figs"
    assert _main("--data", str(data), "--sequences", "08", "--pred", str(pred), "--out", str(out),
                 "--panel-width", "200", "--no-progress") == 0
    assert sorted(p.name for p in out.iterdir()) == ["08_000000.png", "08_000005.png"]
    assert "wrote 2 figure(s)" in capsys.readouterr().out
    for name in ("08_000000.png", "08_000005.png"):
        png = np.asarray(Image.open(out / name).convert("RGB"))
        assert png.shape[1] > 4 * 200  # image/legend column + GT, prediction, errors
    png = np.asarray(Image.open(out / "08_000000.png").convert("RGB"))
    # the car's front face spans ~40 x 17 px in the GT and prediction camera panels (the legend patch is ~100 px)
    assert _is_hue(png.reshape(-1, 3), CAR_RGB, tol=0.02).sum() > 1000


def test_read_prediction_maps_raw_ids(tree):
    from ssckit.commands.render import prediction_file, read_prediction
    from ssckit.data.datasets import FrameId

    _, pred = tree
    path = prediction_file(pred, FrameId("08", "000000"))
    assert path.suffix == ".label"
    grid = read_prediction(path, SEMANTIC_KITTI, GRID)
    assert grid[55, 125, 10] == CAR and grid[0, 0, 8] == ROAD and grid[0, 0, 0] == 0  # raw 252 -> 1, 40 -> 9
    npy = prediction_file(pred, FrameId("08", "000005"))
    assert npy.suffix == ".npy" and read_prediction(npy, SEMANTIC_KITTI, GRID)[55, 125, 10] == CAR


def test_coarse_npy_predictions_are_repeated_to_the_full_grid(tree, tmp_path, capsys):
    from ssckit.commands.render import read_prediction
    from ssckit.errors import DataError

    data, pred = tree
    path = pred / "sequences" / "08" / "predictions" / "000005.npy"
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 20, (64, 64, 8)).astype(np.uint8)  # data.grid_scale 4
    coarse[0, 0, 0] = 255
    np.save(path, coarse)
    full = read_prediction(path, SEMANTIC_KITTI, GRID)
    x, y, z = np.meshgrid(np.arange(256), np.arange(256), np.arange(32), indexing="ij")
    np.testing.assert_array_equal(full, coarse[x // 4, y // 4, z // 4])  # voxel (x, y, z) lies in cell (x/4, y/4, z/4)
    assert full.shape == GRID and full.dtype == np.uint8 and full[3, 3, 3] == 255 and full[4, 0, 0] == coarse[1, 0, 0]
    for shape in ((60, 64, 8), (64, 64, 4), (64, 64)):  # not one integer factor on every axis
        np.save(path, np.zeros(shape, np.uint8))
        with pytest.raises(DataError, match=r"000005\.npy.*integer factor"):
            read_prediction(path, SEMANTIC_KITTI, GRID)
    np.save(path, coarse)
    assert _main("--data", str(data), "--sequences", "08", "--frame-ids", "000005", "--pred", str(pred), "--out",
                 str(tmp_path / "figs"), "--panel-width", "120", "--views", "bev", "--no-progress") == 0
    assert (tmp_path / "figs" / "08_000005.png").is_file()


def test_cli_frame_ids_and_missing_prediction(tree, tmp_path, capsys):
    data, pred = tree
    out = tmp_path / "figs"
    assert _main("--data", str(data), "--sequences", "08", "--frame-ids", "8/000005", "--out", str(out),
                 "--panel-width", "120", "--views", "bev", "--no-progress") == 0
    assert [p.name for p in out.iterdir()] == ["08_000005.png"]
    (pred / "sequences" / "08" / "predictions" / "000005.npy").unlink()
    capsys.readouterr()
    assert _main("--data", str(data), "--sequences", "08", "--pred", str(pred), "--out", str(tmp_path / "x"),
                 "--no-progress") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "000005.label" in err and "prediction not found" in err
    assert not (tmp_path / "x" / "08_000000.png").exists()  # checked before rendering anything
    assert _main("--data", str(data), "--sequences", "08", "--frame-ids", "000010", "--out", str(out)) == 2
    assert "000010" in capsys.readouterr().err


def test_cli_kitti360_without_image(tmp_path, capsys):
    drive = "2013_05_28_drive_0009_sync"  # test drive; labels are public
    vox = tmp_path / "k360" / "data_2d_raw" / drive / "voxels"
    raw = np.zeros(GRID, np.uint16)
    raw[40:60, 110:140, 8:14] = 10  # car
    write_voxel_mask(vox / "000125.bin", raw > 0)
    write_voxel_label(vox / "000125.label", raw)
    write_voxel_mask(vox / "000125.invalid", np.zeros(GRID, bool), packed=False)  # SSCBench: one byte per voxel
    out = tmp_path / "figs"
    assert _main("--data", str(tmp_path / "k360"), "--dataset", "kitti_360", "--sequences", "0009", "--out",
                 str(out), "--panel-width", "120", "--no-progress") == 0
    assert [p.name for p in out.iterdir()] == [f"{drive}_000125.png"]
    assert "1 without an input image" in capsys.readouterr().out
