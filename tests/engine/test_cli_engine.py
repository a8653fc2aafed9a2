"""`ssckit train / eval / predict`: complete --help, one-line user errors, data checked before the run folder, root
precedence, exit status on signals, and the train -> eval -> predict flow."""
from __future__ import annotations

import argparse
import signal
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
                 "--depth-root", "--teacher-cache-root", "--config-dir", "KEY=VALUE", "symphonies_semantic_kitti",
                 "symphonies_tiny_synthetic", "SIGTERM", "examples:", "trainer.precision=bf16-mixed",
                 "trainer.strategy=ddp", "SSCKIT_DATA_ROOT", "SSCKIT_TEACHER_CACHE_ROOT", "tb/"):
        assert word in text, word
    text = _help(engine_cli, "eval", capsys)
    for word in ("--ckpt", "--split", "--sequences", "--out", "scores.yaml", "--data-root", "--teacher-cache-root",
                 "KEY=VALUE"):
        assert word in text, word
    text = _help(engine_cli, "predict", capsys)
    for word in ("--ckpt", "--format", "--zip", "--no-zip", "--description", "submission.zip", ".label", ".npy",
                 "--teacher-cache-root"):
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


ROOT_VARS = ("SSCKIT_DATA_ROOT", "SSCKIT_LABEL_ROOT", "SSCKIT_DEPTH_ROOT", "SSCKIT_TEACHER_CACHE_ROOT")


def test_data_is_checked_before_the_run_folder(engine_cli, tiny_yaml, tiny_data, tmp_path, capsys, monkeypatch):
    for env in ROOT_VARS:
        monkeypatch.delenv(env, raising=False)
    run, missing = tmp_path / "run", tmp_path / "nowhere"
    base = ["train", "--config", str(tiny_yaml), "--run-dir", str(run), f"--data-root={tiny_data['data_root']}"]
    err = _one_line_error(engine_cli, base, capsys)  # the symphonies pipeline reads depth maps
    assert "no depth root" in err and "--depth-root" in err and "SSCKIT_DEPTH_ROOT" in err
    err = _one_line_error(engine_cli, [*base, f"--depth-root={missing}"], capsys)
    assert f"{missing}: depth root not found" in err
    depth = [f"--depth-root={tiny_data['depth_root']}"]
    err = _one_line_error(engine_cli, [*base, *depth, f"--label-root={missing}"], capsys)
    assert f"{missing}: label root not found" in err and "--label-root" in err
    # depth maps of the training sequence only: the first validation sample fails, naming the file
    partial = tmp_path / "depth"
    (partial / "sequences").mkdir(parents=True)
    (partial / "sequences" / "00").symlink_to(tiny_data["depth_root"] / "sequences" / "00")
    err = _one_line_error(engine_cli, [*base, f"--depth-root={partial}"], capsys)
    assert err.startswith("ssckit train: error: frame 08/000000: ") and "08/000000.npy" in err
    monkeypatch.setenv("SSCKIT_DEPTH_ROOT", str(tiny_data["depth_root"]))  # the flag beats the environment
    err = _one_line_error(engine_cli, [*base, f"--depth-root={partial}"], capsys)
    assert "08/000000.npy" in err
    assert not run.exists()
    assert engine_cli([*base, "data.use_depth=false", "--print-config"]) == 0  # depth not read: not needed


def test_vlscene_teacher_cache_is_checked(engine_cli, stereo_data, tmp_path, capsys, monkeypatch):
    for env in ROOT_VARS:
        monkeypatch.delenv(env, raising=False)
    run, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", "--config", "vlscene_tiny_synthetic", "--run-dir", str(run), "--data-root", str(stereo_data),
            "model.teacher=cache", "data.num_workers=0"]
    err = _one_line_error(engine_cli, argv, capsys)
    assert "no teacher cache root" in err and "--teacher-cache-root" in err and "SSCKIT_TEACHER_CACHE_ROOT" in err
    monkeypatch.setenv("SSCKIT_TEACHER_CACHE_ROOT", str(tmp_path / "missing"))
    err = _one_line_error(engine_cli, argv, capsys)
    assert f"{tmp_path / 'missing'}: teacher cache root not found" in err
    cache.mkdir()
    err = _one_line_error(engine_cli, [*argv, "--teacher-cache-root", str(cache)], capsys)  # flag beats env
    assert "frame 00/000000" in err and str(cache / "00" / "000000.npz") in err and "cache-teacher" in err
    assert not run.exists()


def test_symphonies_random_encoder_warning(engine_cli, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SSCKIT_DATA_ROOT", raising=False)
    argv = ["train", "--run-dir", str(tmp_path / "run")]
    assert engine_cli([*argv, "--config", "symphonies_semantic_kitti"]) == 2  # then: no data root
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[1].startswith("ssckit train: error: no data root")
    assert lines[0].startswith("ssckit train: warning: model.pretrained_encoder=false") and "MaskDINO" in lines[0]
    for extra in (["model.pretrained_encoder=true"], ["schedule.max_epochs=1"]):
        assert engine_cli([*argv, "--config", "symphonies_semantic_kitti", *extra]) == 2
        assert "warning" not in capsys.readouterr().err
    assert engine_cli([*argv, "--config", "symphonies_tiny_synthetic"]) == 2  # synthetic sequences: no warning
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_training_exit_status(engine_cli, tiny_yaml, tiny_data, tmp_path, capsys, monkeypatch, signum,
                                          status):
    from ssckit.engine import trainer as engine
    from ssckit.engine.callbacks import TrainingInterrupted

    def interrupted_fit(cfg, run_dir, resume=None, callbacks=None):
        raise TrainingInterrupted(signum, run_dir / "checkpoints" / "last.ckpt", 0, 3)

    monkeypatch.setattr(engine, "fit", interrupted_fit)
    roots = [f"--{k.replace('_', '-')}={v}" for k, v in tiny_data.items()]
    assert engine_cli(["train", "--config", str(tiny_yaml), "--run-dir", str(tmp_path / "r"), *roots]) == status
    err = capsys.readouterr().err
    assert f"stopped by {signal.Signals(signum).name} at epoch 0, step 3" in err and "--resume" in err


def test_train_eval_predict_flow(engine_cli, tiny_yaml, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SSCKIT_TEACHER_CACHE_ROOT", raising=False)
    roots = [f"--{k.replace('_', '-')}={v}" for k, v in tiny_data.items()] + ["--teacher-cache-root=/saved/cache"]
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
    assert list((run / "tb" / "version_1").glob("events.out.tfevents.*"))

    # roots: command line > environment > the run's saved config (train --resume, eval, predict alike)
    from ssckit.commands import eval as eval_cmd, predict as predict_cmd

    def teacher_root(command, *argv: str) -> str:
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        return eval_cmd.load_for(parser.parse_args(["--ckpt", str(ckpt), *argv]))[0].data.teacher_cache_root

    assert teacher_root(eval_cmd) == "/saved/cache" and teacher_root(predict_cmd) == "/saved/cache"
    monkeypatch.setenv("SSCKIT_TEACHER_CACHE_ROOT", "/env/cache")
    assert teacher_root(eval_cmd) == "/env/cache" and teacher_root(predict_cmd) == "/env/cache"
    assert teacher_root(predict_cmd, "--teacher-cache-root", "/flag/cache") == "/flag/cache"
    capsys.readouterr()
    assert engine_cli(["train", "--resume", str(run), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["teacher_cache_root"] == "/env/cache"
    assert engine_cli(["train", "--resume", str(run), "--print-config", "--teacher-cache-root", "/flag"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["teacher_cache_root"] == "/flag"
    monkeypatch.delenv("SSCKIT_TEACHER_CACHE_ROOT")

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
