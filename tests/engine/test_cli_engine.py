"""`ssckit train / eval / predict`: complete --help, one-line user errors, and the train -> eval -> predict flow."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
import yaml

from ssckit.data.labels import SEMANTIC_KITTI
from ssckit.errors import SsckitError


def _help(main, command: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_is_complete(engine_cli, capsys):
    text = _help(engine_cli, "train", capsys)
    for word in ("--config", "--run-dir", "--resume", "--print-config", "--data-root", "--label-root",
                 "--depth-root", "--config-dir", "KEY=VALUE", "symphonies_semantic_kitti", "SIGTERM", "examples:",
                 "trainer.precision=bf16-mixed", "trainer.strategy=ddp", "SSCKIT_DATA_ROOT"):
        assert word in text, word
    text = _help(engine_cli, "eval", capsys)
    for word in ("--ckpt", "--split", "--sequences", "--out", "scores.yaml", "--data-root", "KEY=VALUE"):
        assert word in text, word
    text = _help(engine_cli, "predict", capsys)
    for word in ("--ckpt", "--format", "--zip", "--no-zip", "--description", "submission.zip", ".label", ".npy"):
        assert word in text, word


def _one_line_error(main, argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_user_errors_are_one_line(engine_cli, tiny_yaml, tiny_data, tmp_path, capsys, monkeypatch):
    for env in ("SSCKIT_DATA_ROOT", "SSCKIT_LABEL_ROOT", "SSCKIT_DEPTH_ROOT"):
        monkeypatch.delenv(env, raising=False)
    err = _one_line_error(engine_cli, ["train", "--config", str(tiny_yaml), "--run-dir", str(tmp_path / "r")], capsys)
    assert err.startswith("ssckit train: error: no data root") and "--data-root" in err
    err = _one_line_error(engine_cli, ["train", "--config", str(tiny_yaml), "--run-dir", str(tmp_path / "r"),
                                       "--data-root", str(tmp_path)], capsys)
    assert str(tmp_path) in err and "sequences" in err
    err = _one_line_error(engine_cli, ["train", "--config", str(tiny_yaml), "data.batchsize=2"], capsys)
    assert "data.batchsize" in err and "command line" in err
    err = _one_line_error(engine_cli, ["train"], capsys)
    assert "--config" in err
    err = _one_line_error(engine_cli, ["eval", "--ckpt", str(tmp_path / "nope.ckpt")], capsys)
    assert "checkpoint not found" in err and "nope.ckpt" in err
    err = _one_line_error(engine_cli, ["train", "--resume", str(tmp_path)], capsys)
    assert "checkpoint not found" in err
    with pytest.raises(SsckitError, match="checkpoint not found"):
        engine_cli(["--debug", "predict", "--ckpt", str(tmp_path / "nope.ckpt")])


def test_train_eval_predict_flow(engine_cli, tiny_yaml, tiny_data, tmp_path, capsys):
    roots = [f"--{k.replace('_', '-')}={v}" for k, v in tiny_data.items()]
    run = tmp_path / "run"
    assert engine_cli(["train", "--config", str(tiny_yaml), "--print-config", "schedule.max_epochs=1", *roots]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["name"] == "tiny_test" and printed["schedule"]["max_epochs"] == 1

    assert engine_cli(["train", "--config", str(tiny_yaml), "--run-dir", str(run), "schedule.max_epochs=1",
                       *roots]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["data_root"] == str(tiny_data["data_root"]) and saved["schedule"]["max_epochs"] == 1
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    capsys.readouterr()

    # --resume a finished run with a longer schedule: continues at epoch 1, logs into a new version folder
    assert engine_cli(["train", "--resume", str(run), "schedule.max_epochs=2"]) == 0
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 6)
    assert (run / "logs" / "version_1" / "metrics.csv").is_file()

    assert engine_cli(["eval", "--ckpt", str(ckpt), "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "semantic_kitti: 3 frames, sequences 08" in out and "car" in out and "mIoU" in out
    scores = yaml.safe_load((tmp_path / "ev" / "scores.yaml").read_text())
    names = SEMANTIC_KITTI.class_names
    assert list(scores) == ["iou_completion", "iou_mean"] + [f"iou_{n}" for n in names[1:]] + ["precision",
                                                                                              "recall"]
    assert scores["iou_mean"] == pytest.approx(np.mean([scores[f"iou_{n}"] for n in names[1:]]))

    pred = tmp_path / "pred"
    assert engine_cli(["predict", "--ckpt", str(ckpt), "--sequences", "08", "--format", "label", "npy", "--zip",
                       "--out", str(pred), "--description", "tiny"]) == 0
    files = sorted((pred / "sequences" / "08" / "predictions").iterdir())
    assert [f.name for f in files] == ["000000.label", "000000.npy", "000005.label", "000005.npy",
                                       "000010.label", "000010.npy"]
    learning = np.load(files[1])
    assert learning.shape == (32, 32, 4) and learning.dtype == np.uint8
    raw = np.fromfile(files[0], dtype="<u2")
    full = np.repeat(np.repeat(np.repeat(learning, 8, 0), 8, 1), 8, 2)  # 1:8 grid -> 256 x 256 x 32
    np.testing.assert_array_equal(raw, SEMANTIC_KITTI.to_raw(full).reshape(-1))
    with zipfile.ZipFile(pred / "submission.zip") as zf:
        names_in_zip = set(zf.namelist())
    assert "sequences/08/predictions/000005.label" in names_in_zip and "description.txt" in names_in_zip
    assert not any(n.endswith(".npy") for n in names_in_zip)
