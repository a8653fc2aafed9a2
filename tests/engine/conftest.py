"""Fixtures of the engine tests: the tiny model registered, engine commands in the CLI, a tiny dataset."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_helpers import (ENGINE_COMMANDS, TinyConfig, register_tiny, tiny_experiment_yaml,  # noqa: E402
                            write_fake_semantic_kitti)


@pytest.fixture
def tiny_model(monkeypatch):
    """Registers model ``tiny_test`` for the duration of a test."""
    import ssckit.models as models

    monkeypatch.setattr(models, "MODELS", dict(models.MODELS))
    monkeypatch.setattr(models, "MODEL_CONFIGS", dict(models.MODEL_CONFIGS))
    register_tiny()
    return TinyConfig


@pytest.fixture
def engine_cli(monkeypatch, tiny_model):
    """ssckit.cli.main with train / eval / predict registered."""
    import ssckit.cli as cli

    for name, module in ENGINE_COMMANDS.items():
        monkeypatch.setitem(cli.COMMANDS, name, module)
    return cli.main


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Sequences 00 (5 frames, train) and 08 (3 frames, val) with depth and 1_8 targets."""
    base = tmp_path_factory.mktemp("tiny_kitti")
    paths = {"data_root": base / "dataset", "label_root": base / "labels", "depth_root": base / "depth"}
    write_fake_semantic_kitti(paths["data_root"], {"00": 5, "08": 3}, seed=1, label_root=paths["label_root"],
                              depth_root=paths["depth_root"])
    return paths


@pytest.fixture
def tiny_yaml(tmp_path) -> Path:
    return tiny_experiment_yaml(tmp_path / "tiny.yaml")


@pytest.fixture(scope="session")
def stereo_data(tmp_path_factory) -> Path:
    """Synthetic SemanticKITTI layout with stereo images and LiDAR (``ssckit synth`` at image scale 0.2): training
    sequence 00 (2 frames), validation sequence 08 (2 frames); depth maps under ``<root>/depth``."""
    from ssckit.data.synth import generate

    root = tmp_path_factory.mktemp("stereo_synth")
    for seq, frames in (("00", 2), ("08", 2)):
        generate(root, frames=frames, seed=3, sequences=[seq], image_scale=0.2)
    return root
