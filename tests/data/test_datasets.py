"""Both readers on small synthetic trees written here: layout, enumeration, splits, target rules, v1.0 z shift."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssckit.data import io
from ssckit.data.datasets import DATASETS, KITTI360, FrameId, SemanticKITTI, get_dataset_class
from ssckit.errors import DataError, SsckitError

G = (256, 256, 32)
D9 = "2013_05_28_drive_0009_sync"


def grid(cells: dict[tuple[int, int, int], int], dtype=np.uint16) -> np.ndarray:
    g = np.zeros(G, dtype=dtype)
    for idx, v in cells.items():
        g[idx] = v
    return g


# Hand-placed voxels: raw label and invalid flag -> expected SemanticKITTI / KITTI-360 learning id
CASES = [  # (voxel, raw, invalid, semantic_kitti, kitti_360)
    ((1, 2, 3), 10, False, 1, 1),        # car
    ((4, 5, 6), 10, True, 255, 1),       # labelled but invalid: SK invalid wins, K360 forced valid
    ((7, 8, 9), 52, False, 255, 17),     # other-structure
    ((9, 9, 9), 0, False, 0, 0),         # observed empty
    ((10, 11, 12), 0, True, 255, 255),   # unobserved
    ((20, 21, 22), 40, False, 9, 7),     # road
    ((30, 31, 2), 71, False, 16, 255),   # trunk (ignored in KITTI-360)
    ((30, 31, 3), 71, True, 255, 255),
]
RAW = grid({c[0]: c[1] for c in CASES})
INVALID = grid({c[0]: 1 for c in CASES if c[2]}, bool)


@pytest.fixture(scope="module")
def sk_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("semkitti")
    seq = root / "sequences" / "08"
    for frame in ("000005", "000000"):  # written out of order on purpose
        io.write_voxel_mask(seq / "voxels" / f"{frame}.bin", grid({(3, 4, 0): 1, (3, 4, 5): 1, (3, 4, 31): 1}, bool))
        io.write_voxel_label(seq / "voxels" / f"{frame}.label", RAW)
        io.write_voxel_mask(seq / "voxels" / f"{frame}.invalid", INVALID)
        io.write_voxel_mask(seq / "voxels" / f"{frame}.occluded", grid({(0, 0, 1): 1}, bool))
    io.write_voxel_label(seq / "voxels" / "000010.label", RAW)  # no .bin -> not a frame
    (seq / "voxels" / "notes.bin").write_bytes(b"")  # not a 6-digit id -> ignored
    calib = {f"P{i}": np.arange(12, dtype=float).reshape(3, 4) + i for i in range(4)}
    calib["Tr"] = np.eye(4)
    io.write_calib(seq / "calib.txt", calib)
    io.write_image(seq / "image_2" / "000000.png", np.full((370, 1226, 3), 7, np.uint8))
    io.write_voxel_mask(root / "sequences" / "00" / "voxels" / "000010.bin", np.zeros(G, bool))
    io.write_voxel_mask(root / "sequences" / "11" / "voxels" / "000000.bin", np.zeros(G, bool))  # test: .bin only
    (root / "sequences" / "00" / "voxels" / "000015.bin").write_bytes(b"\0" * 1000)  # truncated
    return root


@pytest.fixture(scope="module")
def k360_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kitti360")
    vox = root / "data_2d_raw" / D9 / "voxels"
    for frame, packed in (("000001", False), ("000000", True)):
        io.write_voxel_mask(vox / f"{frame}.bin", np.zeros(G, bool))
        io.write_voxel_label(vox / f"{frame}.label", RAW)
        io.write_voxel_mask(vox / f"{frame}.invalid", INVALID, packed=packed)
    (root / "data_2d_raw" / "2013_05_28_drive_0006_sync" / "voxels").mkdir(parents=True)
    target = np.zeros(G, np.float32)
    target[0, 0, 0] = 18
    io.save_npy(root / "preprocess" / "labels" / D9 / "000000_1_1.npy", target)
    return root


# --- SemanticKITTI -------------------------------------------------------------------------------------------------

def test_registry():
    assert DATASETS == {"semantic_kitti": SemanticKITTI, "kitti_360": KITTI360}
    assert get_dataset_class("kitti_360") is KITTI360
    with pytest.raises(SsckitError, match="semantic_kitti"):
        get_dataset_class("nyu")


def test_sk_enumerates_sorted_bin_frames(sk_root):
    ds = SemanticKITTI(sk_root, split="val")
    assert ds.frames == [FrameId("08", "000000"), FrameId("08", "000005")] and len(ds) == 2
    assert SemanticKITTI.image_size == (1220, 370) and ds.labels.num_classes == 20


@pytest.mark.parametrize("seqs", [["8"], ["08"], "8", [8]])
def test_sk_sequence_spellings(sk_root, seqs):
    assert SemanticKITTI(sk_root, sequences=seqs).sequences == ["08"]


def test_sk_split_table():
    assert SemanticKITTI.SPLITS["train"] == ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
    assert SemanticKITTI.SPLITS["val"] == ("08",)
    assert SemanticKITTI.SPLITS["test"] == tuple(str(i) for i in range(11, 22))


def test_sk_selection(sk_root):
    assert SemanticKITTI(sk_root).sequences == ["00", "08", "11"]  # nothing chosen: all present
    assert SemanticKITTI(sk_root, split="test", sequences=["11"]).frames == [FrameId("11", "000000")]
    with pytest.raises(DataError, match=r"sequences/01"):  # train needs every train sequence
        SemanticKITTI(sk_root, split="train")
    with pytest.raises(SsckitError, match="not in split 'val'"):
        SemanticKITTI(sk_root, split="val", sequences=["00"])
    with pytest.raises(SsckitError, match="unknown split"):
        SemanticKITTI(sk_root, split="valid")
    with pytest.raises(SsckitError, match="unknown sequence '22'"):
        SemanticKITTI(sk_root, sequences=["22"])


def test_sk_missing_root_and_voxels(tmp_path):
    with pytest.raises(DataError, match="no sequences/ folder"):
        SemanticKITTI(tmp_path, split="val")
    (tmp_path / "sequences" / "08").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no voxels/NNNNNN\.bin under .*sequences/08"):
        SemanticKITTI(tmp_path, split="val")


def test_sk_paths(sk_root, tmp_path):
    ds = SemanticKITTI(sk_root, split="val", label_root=tmp_path / "lab", depth_root=tmp_path / "dep")
    f = FrameId("08", "000005")
    seq = sk_root / "sequences" / "08"
    assert ds.voxel_path(f, "occluded") == seq / "voxels" / "000005.occluded"
    assert ds.image_path(f) == seq / "image_2" / "000005.png"
    assert ds.image_path(f, cam=3) == seq / "image_3" / "000005.png"
    assert ds.scan_path(f) == seq / "velodyne" / "000005.bin"
    assert ds.point_label_path(f) == seq / "labels" / "000005.label"
    assert ds.target_path(f, "1_8") == tmp_path / "lab" / "08" / "000005_1_8.npy"
    assert ds.depth_path(f) == tmp_path / "dep" / "sequences" / "08" / "000005.npy"
    with pytest.raises(ValueError, match="cameras"):
        ds.image_path(f, cam=0)
    with pytest.raises(ValueError, match="voxels/\\*.pseudo"):
        ds.voxel_path(f, "pseudo")
    bare = SemanticKITTI(sk_root, split="val")
    with pytest.raises(SsckitError, match="label_root"):
        bare.target_path(f)
    with pytest.raises(SsckitError, match="depth_root"):
        bare.depth_path(f)


def test_sk_voxel_target_invalid_wins(sk_root):
    ds = SemanticKITTI(sk_root, split="val")
    f = ds.frames[0]
    target = ds.voxel_target(f)
    assert target.shape == G and target.dtype == np.uint8
    for idx, _raw, _inv, want, _ in CASES:
        assert target[idx] == want, idx
    assert (target == 0).sum() == np.prod(G) - len(CASES) + 1  # untouched voxels: raw 0, valid
    np.testing.assert_array_equal(ds.read_raw_labels(f), RAW)
    assert ds.has_labels(f)


def test_sk_v10_z_shift_per_file_kind(sk_root):
    plain = SemanticKITTI(sk_root, split="val")
    ds = SemanticKITTI(sk_root, split="val", v10_z_shift=True)
    f = ds.frames[0]
    occ = ds.read_input_voxels(f)
    assert np.argwhere(occ).tolist() == [[3, 4, 4], [3, 4, 30]]  # z 0 dropped, 5 -> 4, 31 -> 30, top empty
    inv = ds.read_invalid(f)
    assert inv[:, :, 31].all()  # top layer unknown -> invalid
    np.testing.assert_array_equal(inv[:, :, :31], plain.read_invalid(f)[:, :, 1:])
    raw = ds.read_raw_labels(f)
    assert raw[1, 2, 2] == 10 and raw[1, 2, 3] == 0 and not raw[:, :, 31].any()
    assert ds.read_occluded(f)[0, 0, 0] and ds.read_occluded(f)[:, :, 31].all()
    assert not plain.read_occluded(f)[:, :, 31].any()
    target = ds.voxel_target(f)
    assert (target[:, :, 31] == 255).all() and target[1, 2, 2] == 1 and target[20, 21, 21] == 9


def test_sk_test_frames_have_no_labels(sk_root):
    ds = SemanticKITTI(sk_root, split="test", sequences=["11"])
    f = ds.frames[0]
    assert not ds.has_labels(f)
    assert not ds.read_input_voxels(f).any()
    with pytest.raises(DataError, match=r"11/voxels/000000\.label: file not found"):
        ds.voxel_target(f)


def test_sk_truncated_voxel_file(sk_root):
    ds = SemanticKITTI(sk_root, sequences=["00"])
    assert ds.frames == [FrameId("00", "000010"), FrameId("00", "000015")]
    with pytest.raises(DataError, match=r"00/voxels/000015\.bin.*expected 262,144"):
        ds.read_input_voxels(ds.frames[1])


def test_sk_calib_image_target_depth(sk_root, tmp_path):
    ds = SemanticKITTI(sk_root, split="val", label_root=tmp_path, depth_root=tmp_path)
    calib = ds.read_calib("8")
    assert calib["P2"].shape == (3, 4) and calib["Tr"].shape == (4, 4)
    np.testing.assert_array_equal(calib["K"], np.array([[2, 3, 4], [6, 7, 8], [10, 11, 12]], float))
    calib["K"][0, 0] = -1  # callers get copies
    assert ds.read_calib("08")["K"][0, 0] == 2
    img = ds.read_image(FrameId("08", "000000"))
    assert img.shape == (370, 1226, 3) and img.dtype == np.uint8 and (img == 7).all()
    with pytest.raises(DataError, match=r"image_3/000000\.png"):
        ds.read_image(FrameId("08", "000000"), cam=3)
    f = FrameId("08", "000005")
    t8 = np.zeros((32, 32, 4), np.uint8)
    t8[1, 1, 1] = 255
    io.save_npy(tmp_path / "08" / "000005_1_8.npy", t8)
    out = ds.read_target(f, "1_8")
    assert out.shape == (32, 32, 4) and out[1, 1, 1] == 255
    with pytest.raises(DataError, match="000005_1_1.npy: file not found"):
        ds.read_target(f)
    with pytest.raises(ValueError, match="1_3"):
        ds.read_target(f, "1_3")
    io.save_npy(tmp_path / "sequences" / "08" / "000005.npy", np.ones((370, 1226), np.float32))
    assert ds.read_depth(f).shape == (370, 1226)


# --- KITTI-360 -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seq", ["0009", "9", D9, 9])
def test_k360_drive_spellings(k360_root, seq):
    ds = KITTI360(k360_root, sequences=[seq])
    assert ds.sequences == [D9]
    assert ds.frames == [FrameId(D9, "000000"), FrameId(D9, "000001")]


def test_k360_splits_and_selection(k360_root):
    names = {k: [s[17:21] for s in v] for k, v in KITTI360.SPLITS.items()}
    assert names == {"train": ["0000", "0002", "0003", "0004", "0005", "0007", "0010"], "val": ["0006"],
                     "test": ["0009"]}
    assert KITTI360(k360_root, split="test").sequences == [D9]
    assert KITTI360.image_size == (1408, 376) and KITTI360.labels.num_classes == 19
    with pytest.raises(DataError, match="drive_0006_sync.*no voxels"):  # empty voxels/ folder
        KITTI360(k360_root, split="val")
    with pytest.raises(SsckitError, match="unknown drive '0001'"):
        KITTI360(k360_root, sequences=["0001"])
    with pytest.raises(SsckitError, match="not in split 'val'"):
        KITTI360(k360_root, split="val", sequences=["0009"])
    with pytest.raises(SsckitError, match="v10_z_shift"):
        KITTI360(k360_root, split="test", v10_z_shift=True)
    with pytest.raises(DataError, match="no data_2d_raw/ folder"):
        KITTI360(k360_root / "data_2d_raw", split="test")


def test_k360_packed_and_unpacked_invalid(k360_root, tmp_path):
    ds = KITTI360(k360_root, split="test")
    packed, unpacked = ds.frames
    assert ds.voxel_path(unpacked, "invalid").stat().st_size == 2_097_152
    assert ds.voxel_path(packed, "invalid").stat().st_size == 262_144
    np.testing.assert_array_equal(ds.read_invalid(unpacked), INVALID)
    np.testing.assert_array_equal(ds.read_invalid(packed), INVALID)
    bad = tmp_path / "data_2d_raw" / D9 / "voxels"
    io.write_voxel_mask(bad / "000000.bin", np.zeros(G, bool))
    (bad / "000000.invalid").write_bytes(b"\0" * 1000)
    other = KITTI360(tmp_path, split="test")
    with pytest.raises(DataError, match=r"000000\.invalid.*262,144 \(packed\) or 2,097,152 \(unpacked\)"):
        other.read_invalid(other.frames[0])


def test_k360_labelled_voxels_are_valid(k360_root):
    ds = KITTI360(k360_root, split="test")
    for f in ds.frames:
        target = ds.voxel_target(f)
        assert target.dtype == np.uint8
        for idx, _raw, _inv, _, want in CASES:
            assert target[idx] == want, (f, idx)


def test_k360_paths_and_target(k360_root, tmp_path):
    ds = KITTI360(k360_root, split="test", depth_root=tmp_path)
    f = FrameId(D9, "000000")
    d = k360_root / "data_2d_raw" / D9
    assert ds.image_path(f) == d / "image_00" / "data_rect" / "000000.png"
    assert ds.image_path(f, cam=2) == ds.image_path(f, cam=0)
    assert ds.image_path(f, cam=1) == ds.image_path(f, cam=3) == d / "image_01" / "data_rect" / "000000.png"
    assert ds.voxel_path(f, "label") == d / "voxels" / "000000.label"
    assert ds.target_path(f) == k360_root / "preprocess" / "labels" / D9 / "000000_1_1.npy"
    assert ds.depth_path(FrameId("0009", "000001")) == tmp_path / D9 / "000001.npy"
    assert ds.read_target(f)[0, 0, 0] == 18
    with pytest.raises(ValueError, match="occluded"):
        ds.voxel_path(f, "occluded")
    with pytest.raises(SsckitError, match="LiDAR"):
        ds.scan_path(f)
    with pytest.raises(ValueError, match="cameras"):
        ds.image_path(f, cam=4)


def test_k360_fixed_calibration(k360_root):
    calib = KITTI360(k360_root, split="test").read_calib("0009")
    k = np.array([[552.554261, 0, 682.049453], [0, 552.554261, 238.769549], [0, 0, 1]])
    np.testing.assert_array_equal(calib["K"], k)
    np.testing.assert_array_equal(calib["P2"][:, :3], k)
    np.testing.assert_array_equal(calib["P2"][:, 3], 0)
    cam2velo = np.array([[0.04307104361, -0.08829286498, 0.995162929, 0.8043914418],
                         [-0.999004371, 0.007784614041, 0.04392796942, 0.2993489574],
                         [-0.01162548558, -0.9960641394, -0.08786966659, -0.1770225824], [0, 0, 0, 1]])
    assert calib["Tr"].shape == (4, 4)
    np.testing.assert_allclose(calib["Tr"] @ cam2velo, np.eye(4), atol=1e-9)
    # the camera origin sits at cam2velo[:3, 3] in the LiDAR frame; a point 10 m ahead of the LiDAR is in front
    np.testing.assert_allclose((calib["Tr"] @ [0.8043914418, 0.2993489574, -0.1770225824, 1])[:3], 0, atol=1e-9)
    assert (calib["Tr"] @ [10, 0, 0, 1])[2] > 8


def test_k360_drive_calib_file_overrides_fixed_calibration(k360_root, tmp_path):
    """`ssckit synth --image-scale` writes a scaled calib.txt next to the images; it must win over the fixed one."""
    import shutil

    root = tmp_path / "k360"
    shutil.copytree(k360_root, root)
    fixed = KITTI360(root, split="test").read_calib("0009")
    half = {k: fixed["P2"].copy() for k in ("P0", "P1", "P2", "P3")}
    for k in half:
        half[k][:2] *= 0.5
    io.write_calib(root / "data_2d_raw" / D9 / "calib.txt", {**half, "Tr": fixed["Tr"]})
    scaled = KITTI360(root, split="test").read_calib("0009")
    np.testing.assert_allclose(scaled["K"][0, 0], 552.554261 / 2)
    np.testing.assert_allclose(scaled["K"][1, 2], 238.769549 / 2)
    np.testing.assert_allclose(scaled["Tr"], fixed["Tr"], atol=1e-9)
