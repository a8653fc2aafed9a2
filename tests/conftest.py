"""Shared fixtures. ssckit's own __init__ installs the torchvision shim before timm/lightning import it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import ssckit  # noqa: F401  (torchvision shim first)

os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SSCKIT_SHARED", REPO.parent / "shared"))
REAL_FRAME_ROOT = SHARED / "data" / "semkitti-08-001000-v1.0"
ORACLE = SHARED / "oracle"


@pytest.fixture(scope="session")
def real_root() -> Path:
    """Root of the one real SemanticKITTI frame (sequence 08, frame 001000, v1.0 grid); skips if absent."""
    if not (REAL_FRAME_ROOT / "sequences" / "08" / "voxels" / "001000.bin").exists():
        pytest.skip(f"real sample frame not found under {REAL_FRAME_ROOT}")
    return REAL_FRAME_ROOT


@pytest.fixture(scope="session")
def oracle_dir() -> Path:
    """Folder of the official-implementation oracles; skips if absent."""
    if not ORACLE.is_dir():
        pytest.skip(f"oracle folder not found at {ORACLE}")
    return ORACLE


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic SemanticKITTI-layout data (image scale 0.25), built once per session: training sequence 00 (6 SSC
    frames), held-out 08 (3 frames) and test sequence 11 (1 frame: voxels/*.bin only, like the real data)."""
    from ssckit.data.synth import generate

    root = tmp_path_factory.mktemp("synth_semantic_kitti")
    for seq, frames in (("00", 6), ("08", 3), ("11", 1)):
        generate(root, frames=frames, seed=0, sequences=[seq], image_scale=0.25)
    return root
