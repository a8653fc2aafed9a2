"""The demo path end to end at toy size (the full `make demo` runs the same code with more frames and epochs)."""
from __future__ import annotations

import argparse
import zipfile

import pytest
import yaml

from ssckit.cli import main
from ssckit.commands.demo import make_data


@pytest.mark.slow
def test_demo_writes_every_artifact(tmp_path, capsys):
    out, data = tmp_path / "out", tmp_path / "data"
    code = main(["demo", "--out", str(out), "--data", str(data), "--train-frames", "3", "--val-frames", "2",
                 "--epochs", "1", "data.batch_size=1", "data.num_workers=0"])
    text = capsys.readouterr().out
    model = yaml.safe_load((out / "scores.yaml").read_text())
    baseline = yaml.safe_load((out / "baseline_scores.yaml").read_text())
    for scores in (model, baseline):
        assert {"iou_completion", "iou_mean", "precision", "recall", "iou_car", "iou_traffic-sign"} <= set(scores)
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    # the exit code is the verdict: 0 exactly when the trained model beats the per-voxel-majority baseline
    assert code == (0 if model["iou_mean"] > baseline["iou_mean"] else 1)
    assert ("beats" if code == 0 else "does NOT beat") in text
    assert (out / "checkpoint.ckpt").stat().st_size > 0
    names = zipfile.ZipFile(out / "submission.zip").namelist()
    assert "sequences/11/predictions/" in names and "sequences/11/predictions/000005.label" in names
    assert len(list((out / "renders").glob("*.png"))) == 2
    label = out / "predictions" / "sequences" / "08" / "predictions" / "000000.label"
    assert label.stat().st_size == 2 * 256 * 256 * 32  # uint16 raw ids at the official grid
    # the synthetic data is reused when the settings match
    args = argparse.Namespace(train_frames=3, val_frames=2, seed=0, image_scale=0.2)
    make_data(data, args)
    assert "reusing" in capsys.readouterr().out
