"""Target downsampling (datasets.md §3.2) and the ``ssckit preprocess`` command."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ssckit import cli
from ssckit.cli import main
from ssckit.data import io
from ssckit.data.preprocess import downsample_labels, make_targets, scale_factor
from ssckit.errors import SsckitError


def _reference_downsample(labels: np.ndarray, ds: int) -> np.ndarray:
    """Plain per-block loop of the rule, written from the spec text."""
    X, Y, Z = (n // ds for n in labels.shape)
    out = np.zeros((X, Y, Z), dtype=np.uint8)
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                block = labels[x * ds:(x + 1) * ds, y * ds:(y + 1) * ds, z * ds:(z + 1) * ds].reshape(-1)
                n0, n255 = int((block == 0).sum()), int((block == 255).sum())
                if n0 + n255 > 0.95 * ds ** 3:
                    out[x, y, z] = 0 if n0 > n255 else 255
                else:
                    rest = block[(block > 0) & (block < 255)]
                    out[x, y, z] = np.argmax(np.bincount(rest))
    return out


def _block(values: list[tuple[int, int]], ds: int = 2) -> np.ndarray:
    """A ds^3 block holding ``count`` voxels of each ``label`` (order irrelevant to the rule)."""
    flat = np.concatenate([np.full(n, v, dtype=np.uint8) for v, n in values])
    assert flat.size == ds ** 3
    return flat.reshape(ds, ds, ds)


DS2_CASES = [  # (block content, expected), hand-derived: threshold 0.95 * 8 = 7.6
    ([(0, 8)], 0),
    ([(0, 7), (1, 1)], 1),  # 7 > 7.6 is false -> majority of the rest: car
    ([(0, 4), (255, 4)], 255),  # 8 > 7.6, n0 == n255 -> tie goes to 255
    ([(0, 5), (255, 3)], 0),
    ([(0, 3), (255, 5)], 255),
    ([(255, 8)], 255),
    ([(0, 6), (9, 1), (1, 1)], 1),  # tie between road and car -> smallest id
    ([(0, 2), (9, 3), (1, 3)], 1),
    ([(255, 2), (1, 2), (9, 4)], 9),
    ([(0, 6), (255, 1), (18, 1)], 18),  # 7 empty-or-ignore is not > 7.6
]


def test_downsample_ds2_every_branch_and_block_placement():
    grid = np.zeros((4, 6, 2), dtype=np.uint8)  # 2 x 3 x 1 blocks; the tenth case is placed in a separate grid
    expected = np.zeros((2, 3, 1), dtype=np.uint8)
    for n, (content, want) in enumerate(DS2_CASES[:6]):
        bx, by = divmod(n, 3)
        grid[2 * bx:2 * bx + 2, 2 * by:2 * by + 2, 0:2] = _block(content)
        expected[bx, by, 0] = want
    np.testing.assert_array_equal(downsample_labels(grid, 2), expected)
    for content, want in DS2_CASES[6:]:
        assert downsample_labels(_block(content), 2).tolist() == [[[want]]]


@pytest.mark.parametrize("content, expected", [
    ([(0, 487), (1, 25)], 0),  # 487 > 486.4 -> mostly empty
    ([(0, 486), (1, 26)], 1),  # 486 > 486.4 is false -> car
    ([(0, 400), (255, 87), (9, 25)], 0),  # 487 empty+ignore, n0 > n255
    ([(0, 200), (255, 287), (9, 25)], 255),
    ([(0, 486), (9, 13), (1, 13)], 1),  # tie -> smallest id
    ([(0, 486), (1, 12), (9, 14)], 9),
])
def test_downsample_ds8_threshold_boundary(content, expected):
    assert downsample_labels(_block(content, ds=8), 8).tolist() == [[[expected]]]


def test_downsample_matches_reference_loop_on_random_grids():
    rng = np.random.default_rng(0)
    for ds in (2, 8):
        # sparse classes over a mostly-empty grid exercise both branches and many ties
        grid = rng.choice([0, 0, 0, 0, 0, 0, 255, 255, 1, 9, 13, 15, 200], size=(32, 16, 16)).astype(np.uint8)
        grid[:8] = np.where(rng.random((8, 16, 16)) < 0.97, 0, grid[:8])
        np.testing.assert_array_equal(downsample_labels(grid, ds), _reference_downsample(grid, ds))


def test_downsample_inputs():
    f32 = np.zeros((4, 4, 4), dtype=np.float32)
    f32[:2, :2, :2] = 5
    assert downsample_labels(f32, 2)[0, 0, 0] == 5 and downsample_labels(f32, 2).dtype == np.uint8
    with pytest.raises(ValueError):
        downsample_labels(np.zeros((4, 4, 6), dtype=np.uint8), 4)
    assert scale_factor("1_8") == 8
    with pytest.raises(SsckitError):
        scale_factor("8")
    t = make_targets(np.zeros((8, 8, 8), dtype=np.uint8), ("1_1", "1_2", "1_8"))
    assert [v.shape for v in t.values()] == [(8, 8, 8), (4, 4, 4), (1, 1, 1)]


# --- the command ---------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    """Make sure ``preprocess`` is registered even while cli.COMMANDS is being edited (no-op once it is)."""
    monkeypatch.setitem(cli.COMMANDS, "preprocess", "ssckit.commands.preprocess")


# raw SemanticKITTI id -> learning id (datasets.md §1.4), only the ids used here; 52 (other-structure) -> 255
SK_MAP = {0: 0, 10: 1, 40: 9, 50: 13, 70: 15, 52: 255}
K360_MAP = {0: 0, 10: 1, 40: 7, 50: 11, 70: 13, 52: 17, 71: 255}  # datasets.md §4


def _raw_frame(rng: np.random.Generator, raw_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    raw = rng.choice(raw_ids, p=[0.7] + [0.3 / (len(raw_ids) - 1)] * (len(raw_ids) - 1), size=io.GRID)
    raw[:64, :64] = 40  # a solid road patch so that coarse scales are not all empty
    invalid = rng.random(io.GRID) < 0.3
    return raw.astype(np.uint16), invalid


def _write_sk_frame(root, seq, frame, raw, invalid, labels=True):
    vox = root / "sequences" / seq / "voxels"
    io.write_voxel_mask(vox / f"{frame}.bin", raw > 0)
    if labels:
        io.write_voxel_label(vox / f"{frame}.label", raw)
        io.write_voxel_mask(vox / f"{frame}.invalid", invalid)
        io.write_voxel_mask(vox / f"{frame}.occluded", invalid)


def _expected(raw, invalid, table, force_valid=False):
    target = np.vectorize(table.__getitem__, otypes=[np.uint8])(raw)
    mask = invalid & (raw == 0) if force_valid else invalid
    target[mask] = 255
    return target


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.npy"))}


def test_preprocess_command_semantic_kitti(tmp_path, capsys):
    rng = np.random.default_rng(1)
    root, out = tmp_path / "sk", tmp_path / "labels"
    frames = {}
    for frame in ("000000", "000005"):
        frames[frame] = _raw_frame(rng, [0, 10, 40, 50, 70, 52])
        _write_sk_frame(root, "08", frame, *frames[frame])
    _write_sk_frame(root, "11", "000000", frames["000000"][0], None, labels=False)  # test frame: no labels

    args = ["preprocess", str(root), "--out", str(out), "--no-progress"]
    assert main(args + ["--workers", "2"]) == 0
    summary = capsys.readouterr().out
    assert "2 done, 0 skipped, 0 failed, 1 without labels" in summary
    for frame, (raw, invalid) in frames.items():
        want = _expected(raw, invalid, SK_MAP)
        t11 = np.load(out / "08" / f"{frame}_1_1.npy")
        assert t11.dtype == np.uint8 and t11.shape == (256, 256, 32)
        np.testing.assert_array_equal(t11, want)
        t18 = np.load(out / "08" / f"{frame}_1_8.npy")
        assert t18.dtype == np.uint8
        np.testing.assert_array_equal(t18, _reference_downsample(want, 8))
        t12 = np.load(out / "08" / f"{frame}_1_2.npy")
        assert t12.shape == (128, 128, 16) and t12.dtype == np.uint8
        np.testing.assert_array_equal(t12[:8, 28:36], _reference_downsample(want[:16, 56:72], 2))
        assert set(np.unique(t18)) >= {9}  # the road patch survives
    assert not (out / "11").exists()

    before = _mtimes(out)
    assert main(args + ["--workers", "1"]) == 0
    assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    assert _mtimes(out) == before

    (out / "08" / "000005_1_2.npy").unlink()
    assert main(args + ["--workers", "1"]) == 0
    assert "1 done, 1 skipped, 0 failed" in capsys.readouterr().out
    after = _mtimes(out)
    assert all(after[p] == t for p, t in before.items() if "000000" in p.name)
    assert (out / "08" / "000005_1_2.npy").is_file()

    bad = root / "sequences" / "08" / "voxels" / "000010.label"
    _write_sk_frame(root, "08", "000010", *frames["000000"])
    bad.write_bytes(bad.read_bytes()[:1000])  # truncated
    assert main(args + ["--workers", "1", "--sequences", "08"]) == 1
    captured = capsys.readouterr()
    assert str(bad) in captured.err and "0 done, 2 skipped, 1 failed" in captured.out
    assert not list((out / "08").glob("000010_*"))


def test_preprocess_command_v10_shift_and_scale_choice(tmp_path, capsys):
    rng = np.random.default_rng(2)
    root, out = tmp_path / "sk", tmp_path / "labels"
    raw, invalid = _raw_frame(rng, [0, 10, 40, 52])
    _write_sk_frame(root, "08", "000000", raw, invalid)
    assert main(["preprocess", str(root), "--out", str(out), "--split", "val", "--scales", "1_1",
                 "--v10-z-shift", "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    want = _expected(raw, invalid, SK_MAP)
    shifted = np.full_like(want, 255)  # new[:, :, k] = old[:, :, k+1]; the new top layer is invalid
    shifted[:, :, :-1] = want[:, :, 1:]
    np.testing.assert_array_equal(np.load(out / "08" / "000000_1_1.npy"), shifted)
    assert sorted(p.name for p in (out / "08").iterdir()) == ["000000_1_1.npy"]
    with pytest.raises(SystemExit):
        main(["preprocess", str(root), "--out", str(out), "--scales", "8"])
    capsys.readouterr()


def test_preprocess_command_kitti_360(tmp_path, capsys):
    rng = np.random.default_rng(3)
    root, out = tmp_path / "KITTI-360", tmp_path / "labels"
    drive = "2013_05_28_drive_0009_sync"
    raw, invalid = _raw_frame(rng, [0, 10, 40, 52, 71])
    vox = root / "data_2d_raw" / drive / "voxels"
    io.write_voxel_mask(vox / "000000.bin", raw > 0)
    io.write_voxel_label(vox / "000000.label", raw)
    io.write_voxel_mask(vox / "000000.invalid", invalid, packed=False)  # SSCBench: one byte per voxel
    assert main(["preprocess", str(root), "--out", str(out), "--dataset", "kitti_360", "--sequences", "0009",
                 "--scales", "1_1", "1_8", "--no-progress", "--workers", "1"]) == 0
    assert "1 done" in capsys.readouterr().out
    want = _expected(raw, invalid, K360_MAP, force_valid=True)  # labelled voxels are forced valid first
    np.testing.assert_array_equal(np.load(out / drive / "000000_1_1.npy"), want)
    np.testing.assert_array_equal(np.load(out / drive / "000000_1_8.npy"), _reference_downsample(want, 8))
    assert os.path.getsize(out / drive / "000000_1_8.npy") == 128 + 32 * 32 * 4  # npy header + uint8 payload
