"""``ssckit evaluate`` end to end on tiny dataset trees written with the io writers; hand-computed scores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ssckit import cli
from ssckit.data.io import GRID, NUM_VOXELS, write_voxel_label, write_voxel_mask

EPS32 = float(np.finfo(np.float32).eps)
DRIVE = "2013_05_28_drive_0006_sync"  # KITTI-360 val drive


@pytest.fixture(autouse=True)
def _only_my_commands(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"evaluate": "ssckit.commands.evaluate"})


def _grid(values: dict[int, int], dtype=np.uint16) -> np.ndarray:
    flat = np.zeros(NUM_VOXELS, dtype=dtype)
    for index, value in values.items():
        flat[index] = value
    return flat.reshape(GRID)


def _write_frame(vox_dir: Path, frame: str, raw_gt: dict[int, int], invalid: dict[int, int], packed: bool = True):
    write_voxel_mask(vox_dir / f"{frame}.bin", np.zeros(GRID, bool))
    write_voxel_label(vox_dir / f"{frame}.label", _grid(raw_gt))
    write_voxel_mask(vox_dir / f"{frame}.invalid", _grid(invalid, np.uint8).astype(bool), packed=packed)


def _write_pred(pred_root: Path, seq: str, frame: str, raw: dict[int, int]) -> Path:
    path = pred_root / "sequences" / seq / "predictions" / f"{frame}.label"
    write_voxel_label(path, _grid(raw))
    return path


@pytest.fixture()
def semkitti(tmp_path):
    """Sequence 08, two frames. Frame 000000: GT car(10)@0, road(40)@1, other-structure(52 -> ignore)@2, invalid@3;
    prediction moving-car(252)@0, road@1, building@2 (ignored), car@3 (invalid), car@4 on empty GT (FP).
    Frame 000005: GT car@0, lane-marking(60 = road)@1; prediction empty@0 (FN), road@1."""
    data, pred = tmp_path / "data", tmp_path / "pred"
    vox = data / "sequences" / "08" / "voxels"
    _write_frame(vox, "000000", {0: 10, 1: 40, 2: 52}, {3: 1})
    _write_frame(vox, "000005", {0: 10, 1: 60}, {})
    _write_pred(pred, "08", "000000", {0: 252, 1: 40, 2: 50, 3: 10, 4: 10})
    _write_pred(pred, "08", "000005", {1: 40})
    return data, pred


def _run(*argv: str) -> int:
    return cli.main(["evaluate", *argv])


def test_scores_match_hand_values(semkitti, tmp_path, capsys):
    data, pred = semkitti
    out = tmp_path / "res" / "scores.yaml"
    assert _run("--pred", str(pred), "--data", str(data), "--split", "val", "--out", str(out)) == 0
    scores = yaml.safe_load(out.read_text())
    # car: TP 1, FP 1 (frame 0 voxel 4), FN 1 (frame 5 voxel 0) -> 1/3; road: TP 2 -> 1; others absent -> 0
    assert scores["iou_car"] == pytest.approx(1 / 3)
    assert scores["iou_road"] == pytest.approx(1.0)
    assert scores["iou_bicycle"] == 0.0 and scores["iou_traffic-sign"] == 0.0
    assert scores["iou_mean"] == pytest.approx((1 / 3 + 1) / 19)
    # occupied: TPo 3, predicted occupied 4, GT occupied 4, non-(0,0) entries 5
    assert scores["precision"] == pytest.approx(3 / (4 + EPS32), rel=1e-12)
    assert scores["recall"] == pytest.approx(3 / (4 + EPS32), rel=1e-12)
    assert scores["iou_completion"] == pytest.approx(0.6)
    assert "iou_empty" not in scores and len(scores) == 19 + 4
    printed = capsys.readouterr().out
    assert "car" in printed and "33.33" in printed and "60.00" in printed


def test_sequences_option_equals_split(semkitti, tmp_path):
    data, pred = semkitti
    out = tmp_path / "s.yaml"
    assert _run("--pred", str(pred), "--data", str(data), "--sequences", "8", "--out", str(out)) == 0
    assert yaml.safe_load(out.read_text())["iou_completion"] == pytest.approx(0.6)


def test_missing_prediction_is_one_clear_error(semkitti, capsys):
    data, pred = semkitti
    missing = pred / "sequences" / "08" / "predictions" / "000005.label"
    missing.unlink()
    assert _run("--pred", str(pred), "--data", str(data), "--split", "val") == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_invalid_raw_id_is_an_error(semkitti, capsys):
    data, pred = semkitti
    bad = _write_pred(pred, "08", "000005", {1: 9})  # learning id of road written as a raw id: unused raw 9
    assert _run("--pred", str(pred), "--data", str(data), "--split", "val") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "[9]" in err and "Traceback" not in err


def test_wrong_size_prediction_is_an_error(semkitti, capsys):
    data, pred = semkitti
    bad = pred / "sequences" / "08" / "predictions" / "000000.label"
    bad.write_bytes(b"\0" * 100)
    assert _run("--pred", str(pred), "--data", str(data), "--split", "val") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err


def test_kitti360_labelled_voxels_count_and_predictions_under_drive(tmp_path):
    """GT building(50)@0 marked invalid but labelled -> forced valid; trunk(71)@1 is ignored in KITTI-360;
    empty@2 invalid. Prediction building@0, car@1 (ignored), car@2 (invalid): building IoU 1, car 0."""
    data, pred = tmp_path / "K360", tmp_path / "pred"
    _write_frame(data / "data_2d_raw" / DRIVE / "voxels", "000000", {0: 50, 1: 71}, {0: 1, 2: 1}, packed=False)
    _write_pred(pred, DRIVE, "000000", {0: 50, 1: 10, 2: 10})
    out = tmp_path / "k.yaml"
    assert _run("--pred", str(pred), "--data", str(data), "--dataset", "kitti_360", "--split", "val",
                "--out", str(out)) == 0
    scores = yaml.safe_load(out.read_text())
    assert scores["iou_building"] == pytest.approx(1.0) and scores["iou_car"] == 0.0
    assert scores["iou_mean"] == pytest.approx(1 / 18) and scores["iou_completion"] == pytest.approx(1.0)
    assert "iou_other-object" in scores and "iou_trunk" not in scores and len(scores) == 18 + 4


def test_frames_come_from_label_files_and_valid_is_an_alias(semkitti, tmp_path, capsys):
    """Official: GT = voxels/*.label. A .label without .bin is scored; a .bin without .label is not (noted)."""
    data, pred = semkitti
    vox = data / "sequences" / "08" / "voxels"
    (vox / "000005.bin").unlink()
    write_voxel_mask(vox / "000010.bin", np.zeros(GRID, bool))  # input only: no GT, no prediction needed
    out = tmp_path / "v.yaml"
    assert _run("--pred", str(pred), "--data", str(data), "--split", "valid", "--out", str(out)) == 0
    scores = yaml.safe_load(out.read_text())
    assert scores["iou_completion"] == pytest.approx(0.6) and scores["iou_car"] == pytest.approx(1 / 3)
    captured = capsys.readouterr()
    assert "2 frames" in captured.out
    assert "1 of 2 ground-truth frames have no voxels/*.bin" in captured.err
    assert "1 voxels/*.bin frames have no .label" in captured.err


def test_a_sequence_without_any_label_is_a_clear_error(semkitti, capsys):
    data, pred = semkitti
    test_vox = data / "sequences" / "11" / "voxels"
    write_voxel_mask(test_vox / "000000.bin", np.zeros(GRID, bool))  # a test sequence: input only
    assert _run("--pred", str(pred), "--data", str(data), "--sequences", "08", "11") == 2
    err = capsys.readouterr().err
    assert str(test_vox) in err and ".label" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _run("--pred", str(pred), "--data", str(data), "--split", "test") == 2  # 11 has no GT; 12..21 no folder
