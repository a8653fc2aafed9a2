"""Low-level format readers/writers of ssckit.data.io: round trips, known byte layouts, clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from ssckit.data import io
from ssckit.errors import DataError

SMALL = (4, 4, 8)  # 128 voxels -> 16 packed bytes


def test_unpack_bits_is_msb_first_and_c_order():
    packed = np.zeros(16, dtype=np.uint8)
    packed[0] = 0b1000_0001  # voxels 0 and 7
    packed[1] = 0b0100_0000  # voxel 9
    grid = io.unpack_bits(packed, SMALL)
    assert grid.shape == SMALL and grid.dtype == bool
    assert grid.sum() == 3
    # flat = x*32 + y*8 + z for (4, 4, 8)
    assert grid[0, 0, 0] and grid[0, 0, 7] and grid[0, 1, 1]


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(0)
    grid = rng.random(SMALL) < 0.3
    packed = io.pack_bits(grid)
    assert packed.dtype == np.uint8 and packed.size == 16
    np.testing.assert_array_equal(io.unpack_bits(packed, SMALL), grid)


def test_voxel_mask_file_round_trip_packed_and_unpacked(tmp_path):
    rng = np.random.default_rng(1)
    grid = rng.random(SMALL) < 0.5
    io.write_voxel_mask(tmp_path / "a.invalid", grid)
    assert (tmp_path / "a.invalid").stat().st_size == 16
    np.testing.assert_array_equal(io.read_voxel_mask(tmp_path / "a.invalid", SMALL), grid)
    io.write_voxel_mask(tmp_path / "b.invalid", grid, packed=False)
    assert (tmp_path / "b.invalid").stat().st_size == 128
    np.testing.assert_array_equal(io.read_voxel_mask(tmp_path / "b.invalid", SMALL, allow_unpacked=True), grid)
    with pytest.raises(DataError, match="b.invalid"):  # unpacked size without allow_unpacked
        io.read_voxel_mask(tmp_path / "b.invalid", SMALL)


def test_unpacked_mask_with_values_above_one_is_rejected(tmp_path):
    p = tmp_path / "x.invalid"
    p.write_bytes(bytes([0, 1, 2, 0]) * 32)
    with pytest.raises(DataError, match="x.invalid.*value 2"):
        io.read_voxel_mask(p, SMALL, allow_unpacked=True)


def test_voxel_label_round_trip_is_little_endian_uint16(tmp_path):
    labels = np.arange(128, dtype=np.uint16).reshape(SMALL) * 3
    p = tmp_path / "000000.label"
    io.write_voxel_label(p, labels)
    assert p.read_bytes()[:4] == bytes([0, 0, 3, 0])
    out = io.read_voxel_label(p, SMALL)
    assert out.shape == SMALL
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize("nbytes", [15, 17, 0])
def test_wrong_size_mask_names_the_file(tmp_path, nbytes):
    p = tmp_path / "bad.bin"
    p.write_bytes(b"\0" * nbytes)
    with pytest.raises(DataError, match=r"bad\.bin.*expected 16"):
        io.read_voxel_mask(p, SMALL)


def test_truncated_label_names_the_file(tmp_path):
    p = tmp_path / "short.label"
    p.write_bytes(b"\0" * 200)
    with pytest.raises(DataError, match=r"short\.label.*truncated"):
        io.read_voxel_label(p, SMALL)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nope\.bin: file not found"):
        io.read_voxel_mask(tmp_path / "nope.bin")


def test_calib_round_trip_and_tr_is_4x4(tmp_path):
    rng = np.random.default_rng(2)
    calib = {f"P{i}": rng.normal(size=(3, 4)) for i in range(4)}
    tr = np.eye(4)
    tr[:3] = rng.normal(size=(3, 4))
    calib["Tr"] = tr
    io.write_calib(tmp_path / "calib.txt", calib)
    out = io.read_calib(tmp_path / "calib.txt")
    for k in ("P0", "P1", "P2", "P3"):
        assert out[k].shape == (3, 4)
        np.testing.assert_allclose(out[k], calib[k], rtol=1e-11)
    assert out["Tr"].shape == (4, 4)
    np.testing.assert_allclose(out["Tr"], tr, rtol=1e-11)


def test_calib_errors_name_the_file(tmp_path):
    p = tmp_path / "calib.txt"
    p.write_text("P0: 1 2 3\n")
    with pytest.raises(DataError, match=r"calib\.txt.*expected 12 numbers, found 3"):
        io.read_calib(p)
    p.write_text("".join(f"P{i}: " + " ".join(["1"] * 12) + "\n" for i in range(4)))
    with pytest.raises(DataError, match=r"calib\.txt.*lacks Tr"):
        io.read_calib(p)
    p.write_text("P0: a b c d e f g h i j k l\n")
    with pytest.raises(DataError, match="not numbers"):
        io.read_calib(p)


def test_calib_ignores_unused_keys_but_checks_the_required_ones(tmp_path):
    p = tmp_path / "calib.txt"
    rows = "".join(f"{k}: " + " ".join(str(i + 12 * n) for i in range(12)) + "\n"
                   for n, k in enumerate(("P0", "P1", "P2", "P3", "Tr")))
    p.write_text("R0_rect: 1 0 0 0 1 0 0 0 1\n" + rows + "Tr_imu_velo: x y\ncomment line\n")
    out = io.read_calib(p)
    assert sorted(out) == ["P0", "P1", "P2", "P3", "Tr"]
    assert out["P2"][1, 0] == 28.0 and out["Tr"][2, 3] == 59.0 and out["Tr"][3].tolist() == [0, 0, 0, 1]
    p.write_text("R0_rect: 1 0 0 0 1 0 0 0 1\n" + rows.replace("P3: 36", "P3: 3x6"))
    with pytest.raises(DataError, match=r"calib\.txt: line 5 \(P3\): values are not numbers"):
        io.read_calib(p)
    p.write_text(rows.replace("Tr: 48 49", "Tr: 49"))  # 11 numbers
    with pytest.raises(DataError, match=r"calib\.txt: line 5 \(Tr\): expected 12 numbers, found 11"):
        io.read_calib(p)


def test_poses_and_times_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    poses = np.tile(np.eye(4), (5, 1, 1))
    poses[:, :3] = rng.normal(size=(5, 3, 4))
    io.write_poses(tmp_path / "poses.txt", poses)
    out = io.read_poses(tmp_path / "poses.txt")
    assert out.shape == (5, 4, 4)
    np.testing.assert_allclose(out, poses, rtol=1e-8)
    times = np.array([0.0, 0.103, 0.2071])
    io.write_times(tmp_path / "times.txt", times)
    np.testing.assert_allclose(io.read_times(tmp_path / "times.txt"), times, rtol=1e-6)
    (tmp_path / "bad.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match=r"bad\.txt.*expected 12"):
        io.read_poses(tmp_path / "bad.txt")


def test_image_round_trip_and_corrupt_png(tmp_path):
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    io.write_image(tmp_path / "a.png", img)
    out = io.read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, img)
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png"):
        io.read_image(tmp_path / "cut.png")


def test_depth_reader_accepts_float_and_rejects_nan_negative_and_bad_shape(tmp_path):
    depth = np.full((3, 4), 7.5, dtype=np.float64)
    io.save_npy(tmp_path / "ok.npy", depth)
    out = io.read_depth(tmp_path / "ok.npy")
    assert out.dtype == np.float32 and out.shape == (3, 4)
    depth[1, 2] = np.nan
    io.save_npy(tmp_path / "nan.npy", depth)
    with pytest.raises(DataError, match=r"nan\.npy.*1 NaN"):
        io.read_depth(tmp_path / "nan.npy")
    depth[1, 2] = -1.0
    io.save_npy(tmp_path / "neg.npy", depth)
    with pytest.raises(DataError, match=r"neg\.npy.*negative"):
        io.read_depth(tmp_path / "neg.npy")
    io.save_npy(tmp_path / "3d.npy", np.ones((2, 3, 4), np.float32))
    with pytest.raises(DataError, match=r"3d\.npy.*2-D"):
        io.read_depth(tmp_path / "3d.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"junk\.npy"):
        io.read_depth(tmp_path / "junk.npy")


def test_scan_round_trip_and_bad_size(tmp_path):
    pts = np.array([[1.0, -2.0, 0.5, 0.25], [3.0, 4.0, -1.0, 0.0]], dtype=np.float32)
    io.write_scan(tmp_path / "s.bin", pts)
    assert (tmp_path / "s.bin").stat().st_size == 32
    np.testing.assert_array_equal(io.read_scan(tmp_path / "s.bin"), pts)
    (tmp_path / "odd.bin").write_bytes(b"\0" * 20)
    with pytest.raises(DataError, match=r"odd\.bin.*multiple of 16"):
        io.read_scan(tmp_path / "odd.bin")


def test_point_labels_split_semantic_low_and_instance_high_bits(tmp_path):
    p = tmp_path / "p.label"
    p.write_bytes(np.array([(7 << 16) | 10, 252, (1 << 16) | 40], dtype="<u4").tobytes())
    sem, inst = io.read_point_labels(p)
    np.testing.assert_array_equal(sem, [10, 252, 40])
    np.testing.assert_array_equal(inst, [7, 0, 1])
    io.write_point_labels(tmp_path / "q.label", sem, inst)
    assert (tmp_path / "q.label").read_bytes() == p.read_bytes()
    with pytest.raises(DataError, match=r"p\.label.*expected 16"):
        io.read_point_labels(p, num_points=4)


def test_read_target_casts_and_validates(tmp_path):
    t = np.zeros((2, 2, 2), dtype=np.float32)
    t[0, 0, 0] = 255
    t[1, 1, 1] = 19
    io.save_npy(tmp_path / "t.npy", t)
    out = io.read_target(tmp_path / "t.npy", (2, 2, 2), num_classes=20)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 255 and out[1, 1, 1] == 19
    with pytest.raises(DataError, match=r"t\.npy.*shape"):
        io.read_target(tmp_path / "t.npy", (2, 2, 4))
    with pytest.raises(DataError, match=r"t\.npy.*class id 19"):
        io.read_target(tmp_path / "t.npy", (2, 2, 2), num_classes=19)
    t[0, 1, 0] = 2.5
    io.save_npy(tmp_path / "frac.npy", t)
    with pytest.raises(DataError, match="non-integer"):
        io.read_target(tmp_path / "frac.npy", (2, 2, 2))


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    io.atomic_write_bytes(tmp_path / "sub" / "f.bin", b"abc")
    io.save_npy(tmp_path / "sub" / "g.npy", np.arange(3))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["f.bin", "g.npy"]
    np.testing.assert_array_equal(io.load_npy(tmp_path / "sub" / "g.npy"), [0, 1, 2])


def test_load_npy_rejects_npz_and_non_numeric_arrays(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    (tmp_path / "a.npz").rename(tmp_path / "packed.npy")  # an .npz archive saved under a .npy name
    with pytest.raises(DataError, match=r"packed\.npy: .*\.npz archive"):
        io.load_npy(tmp_path / "packed.npy")
    np.save(tmp_path / "words.npy", np.array(["road", "car"]))
    with pytest.raises(DataError, match=r"words\.npy: .*numeric.*<U4"):
        io.load_npy(tmp_path / "words.npy")
    with pytest.raises(DataError, match=r"words\.npy"):
        io.read_depth(tmp_path / "words.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects\.npy"):
        io.load_npy(tmp_path / "objects.npy")
    np.save(tmp_path / "ok.npy", np.array([True, False]))
    assert io.load_npy(tmp_path / "ok.npy").dtype == bool
