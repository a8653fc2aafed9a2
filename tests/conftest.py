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
