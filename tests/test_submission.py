"""Submission writer, zip layout and validator (checks of validate_submission.py --task completion + raw ids)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from ssckit import cli
from ssckit.data.io import GRID, NUM_VOXELS, write_voxel_mask
from ssckit.data.labels import KITTI_360, SEMANTIC_KITTI
from ssckit.submission import validate_submission, write_prediction_label, zip_submission

TEST_SEQS = [f"{s:02d}" for s in range(11, 22)]
FRAMES = {"11": ["000000", "000005"], "12": ["000010"], **{s: ["000000"] for s in TEST_SEQS[2:]}}
PARTIAL = {"11": FRAMES["11"], "12": FRAMES["12"]}  # a DATA_ROOT holding only two test sequences
DIRS = ["sequences/"] + [d for s in TEST_SEQS for d in (f"sequences/{s}/", f"sequences/{s}/predictions/")]
ZEROS = bytes(2 * NUM_VOXELS)  # a valid prediction: all empty (raw 0)


def _data(root: Path, frames: dict[str, list[str]]) -> Path:
    for seq, names in frames.items():
        for f in names:
            write_voxel_mask(root / "sequences" / seq / "voxels" / f"{f}.bin", np.zeros(GRID, bool))
    return root


@pytest.fixture()
def data_root(tmp_path) -> Path:
    """All eleven test sequences 11-21 (voxels/*.bin only, like the real data)."""
    return _data(tmp_path / "dataset", FRAMES)


@pytest.fixture()
def partial_root(tmp_path) -> Path:
    return _data(tmp_path / "partial", PARTIAL)


def _zip(path: Path, entries: dict[str, bytes | None]) -> Path:
    """Write a zip by hand: value None = directory entry."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), b"" if data is None else data)
    return path


def _good_entries(frames: dict[str, list[str]] = FRAMES) -> dict[str, bytes | None]:
    entries: dict[str, bytes | None] = {"sequences/": None}
    for s, names in frames.items():
        entries.update({f"sequences/{s}/": None, f"sequences/{s}/predictions/": None})
        entries.update({f"sequences/{s}/predictions/{f}.label": ZEROS for f in names})
    return entries


def _cli(*argv: str) -> int:
    return cli.main(["validate-submission", *argv])


@pytest.fixture(autouse=True)
def _only_my_command(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"validate-submission": "ssckit.commands.validate_submission"})


def test_write_maps_learning_to_raw_in_xyz_order(tmp_path):
    pred = np.zeros(GRID, dtype=np.uint8)
    pred[0, 0, 1] = 1      # car -> raw 10 at flat 1
    pred[0, 1, 0] = 9      # road -> raw 40 at flat 32
    pred[1, 0, 0] = 19     # traffic-sign -> raw 81 at flat 8192
    path = write_prediction_label(tmp_path, ("11", "000005"), pred, SEMANTIC_KITTI)
    assert path == tmp_path / "sequences" / "11" / "predictions" / "000005.label"
    assert path.stat().st_size == 4_194_304
    raw = np.fromfile(path, dtype="<u2")
    assert raw[1] == 10 and raw[32] == 40 and raw[8192] == 81 and np.count_nonzero(raw) == 3
    pred[1, 0, 0] = 18     # KITTI-360 has 19 classes: 18 = other-object -> raw 99
    kitti360 = np.fromfile(write_prediction_label(tmp_path, ("11", "000000"), pred, KITTI_360), dtype="<u2")
    assert kitti360[1] == 10 and kitti360[32] == 48 and kitti360[8192] == 99  # learning 9 = sidewalk in KITTI-360
    pred[1, 0, 0] = 19
    with pytest.raises(ValueError, match="19"):
        write_prediction_label(tmp_path, ("11", "000000"), pred, KITTI_360)
    with pytest.raises(ValueError):
        write_prediction_label(tmp_path, ("11", "000000"), np.zeros((4, 4, 4), np.uint8), SEMANTIC_KITTI)


def test_round_trip_write_zip_validate(tmp_path, data_root):
    pred_root = tmp_path / "out"
    for seq, frames in FRAMES.items():
        for f in frames:
            pred = np.full(GRID, 15, dtype=np.uint8)  # vegetation
            write_prediction_label(pred_root, (seq, f), pred, SEMANTIC_KITTI)
    zip_path = zip_submission(pred_root, tmp_path / "sub.zip", description="method: test\n")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        assert set(DIRS) <= set(names) and "description.txt" in names
        assert all(zf.getinfo(d).is_dir() for d in DIRS)
        assert np.frombuffer(zf.read("sequences/12/predictions/000010.label"), "<u2")[[0, -1]].tolist() == [70, 70]
    assert validate_submission(zip_path, data_root, SEMANTIC_KITTI) == []


def test_hand_built_valid_zip_passes(tmp_path, data_root):
    entries = _good_entries()
    entries["description.txt"] = b"hi"
    assert validate_submission(_zip(tmp_path / "ok.zip", entries), data_root, SEMANTIC_KITTI) == []


@pytest.mark.parametrize("fault", ["missing_frame", "wrong_size", "stray_file", "no_dir_entries", "invalid_id"])
def test_each_planted_fault_is_reported(tmp_path, data_root, fault):
    entries = _good_entries()
    name = "sequences/11/predictions/000005.label"
    if fault == "missing_frame":
        del entries[name]
        expected = [f'"{name}" is missing']
    elif fault == "wrong_size":
        entries[name] = bytes(2 * NUM_VOXELS - 2)
        expected = [f'"{name}" should have 2,097,152 labels']
    elif fault == "stray_file":
        entries["sequences/11/predictions/000007.npy"] = b"x"
        entries["readme.md"] = b"x"
        expected = ['"readme.md"', '"sequences/11/predictions/000007.npy"']
    elif fault == "no_dir_entries":
        entries = {k: v for k, v in entries.items() if v is not None}
        expected = [f'"{d}" missing' for d in DIRS]
    else:
        data = np.zeros(NUM_VOXELS, "<u2")
        data[[3, 4]] = 9  # road written as a learning id: raw 9 is unused
        data[5] = 1000    # beyond the lookup table
        entries[name] = data.tobytes()
        expected = [f'"{name}" holds 3 voxel(s)', "9, 1000"]
    problems = validate_submission(_zip(tmp_path / "bad.zip", entries), data_root, SEMANTIC_KITTI)
    assert len(problems) == (len(DIRS) if fault == "no_dir_entries" else len(expected) if fault == "stray_file"
                             else 1), problems
    for text in expected:
        assert any(text in p for p in problems), (text, problems)


def test_all_faults_at_once_each_listed_by_the_cli(tmp_path, data_root, capsys):
    entries = {k: v for k, v in _good_entries().items() if k != "sequences/"}   # 1 missing directory entry
    del entries["sequences/11/predictions/000000.label"]                          # 1 missing frame
    entries["sequences/11/predictions/000005.label"] = b"\0\0"                   # 1 wrong size
    entries["notes.txt"] = b"x"                                                   # 1 stray file
    bad_ids = np.zeros(NUM_VOXELS, "<u2")
    bad_ids[0] = 52  # other-structure: maps to ignore, not a class
    entries["sequences/12/predictions/000010.label"] = bad_ids.tobytes()         # 1 invalid id
    zip_path = _zip(tmp_path / "all.zip", entries)
    assert _cli(str(zip_path), "--data", str(data_root)) != 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 6 and "5 problems" in out[-1], out
    assert _cli(str(_zip(tmp_path / "g.zip", _good_entries())), "--data", str(data_root)) == 0


def test_not_a_zip_name_and_no_test_data(tmp_path, data_root):
    path = _zip(tmp_path / "sub.tar", _good_entries())
    assert any(".zip" in p for p in validate_submission(path, data_root, SEMANTIC_KITTI))
    assert validate_submission(_zip(tmp_path / "s.zip", {}), tmp_path / "nothing", SEMANTIC_KITTI)


def test_partial_checks_absent_sequences_for_size_only_and_other_sequences_are_stray(tmp_path, partial_root,
                                                                                      capsys):
    entries = _good_entries(PARTIAL)
    entries.update({"sequences/13/": None, "sequences/13/predictions/": None,
                    "sequences/13/predictions/000000.label": bytes(10),   # 13 is not on disk: size still checked
                    "sequences/08/predictions/000000.label": ZEROS})      # 08 is not a test sequence: stray
    problems = validate_submission(_zip(tmp_path / "x.zip", entries), partial_root, SEMANTIC_KITTI, partial=True)
    assert len(problems) == 2, problems
    assert "sequences/13/predictions/000000.label" in problems[1] and "should have" in problems[1]
    assert "unneeded" in problems[0] and "sequences/08/" in problems[0]
    assert _cli(str(_zip(tmp_path / "g.zip", _good_entries(PARTIAL))), "--data", str(partial_root), "--partial") == 0
    out = capsys.readouterr().out
    assert "partial" in out and "11, 12" in out and "ready for submission" not in out


def test_without_partial_absent_test_sequences_are_an_error(tmp_path, partial_root, capsys):
    """The official validator needs every test sequence: a DATA_ROOT lacking 13-21 cannot prove completeness."""
    zip_path = _zip(tmp_path / "p.zip", _good_entries(PARTIAL))
    problems = validate_submission(zip_path, partial_root, SEMANTIC_KITTI)
    assert "13, 14, 15, 16, 17, 18, 19, 20, 21" in problems[0] and "cannot verify" in problems[0], problems
    missing_dirs = sorted(p for p in problems[1:] if "directory entry" in p)
    assert len(missing_dirs) == 18 and len(problems) == 19, problems  # sequences/13/ ... sequences/21/predictions/
    assert _cli(str(zip_path), "--data", str(partial_root)) == 1
    assert "19 problems" in capsys.readouterr().out.splitlines()[-1]
    assert _cli(str(zip_path), "--data", str(partial_root), "--partial") == 0


def test_a_test_sequence_missing_from_the_zip_is_reported(tmp_path, data_root, capsys):
    entries = {k: v for k, v in _good_entries().items() if not k.startswith("sequences/21/")}
    problems = validate_submission(_zip(tmp_path / "no21.zip", entries), data_root, SEMANTIC_KITTI)
    assert sorted(problems) == sorted(['directory entry "sequences/21/" missing inside the zip',
                                       'directory entry "sequences/21/predictions/" missing inside the zip',
                                       '"sequences/21/predictions/000000.label" is missing inside the zip'])
    assert _cli(str(tmp_path / "no21.zip"), "--data", str(data_root)) == 1
    # --partial does not excuse a sequence that DATA_ROOT holds
    assert _cli(str(tmp_path / "no21.zip"), "--data", str(data_root), "--partial") == 1
