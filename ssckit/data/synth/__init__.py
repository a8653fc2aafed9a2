"""Procedural driving world written in the exact SemanticKITTI / SSCBench-KITTI-360 layout (``ssckit synth``).

The image really determines the scene: images, stereo-like depth, the LiDAR scan and the voxel ground truth are all
rendered from one world of boxes, cylinders, spheroids and a ground-class map, through the dataset's calibration.
Same seed, same output bytes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from ssckit.data.synth.materials import MATERIALS, chromaticity, colour_family
from ssckit.data.synth.writer import FRAME_STEP, LAYOUTS, generate_sequence

DEFAULT_SEQUENCES = {"semantic_kitti": ("00", "08"), "kitti_360": ("0000", "0006")}


def generate(out_root: str | os.PathLike, frames: int, seed: int = 0, dataset: str = "semantic_kitti",
             sequences: Sequence[str] | None = None, image_scale: float = 1.0,
             progress: Callable[[], None] | None = None) -> dict[str, list[str]]:
    """Write ``frames`` SSC frames per sequence under ``out_root``; returns {sequence folder: frame ids}.

    ``progress`` is called once per written frame.
    """
    from ssckit.errors import SsckitError

    if dataset not in LAYOUTS:
        raise SsckitError(f"unknown dataset {dataset!r}; choose one of {sorted(LAYOUTS)}")
    if not 0.05 <= image_scale <= 2.0:
        raise SsckitError(f"--image-scale must lie in [0.05, 2], got {image_scale}")
    layout = LAYOUTS[dataset](Path(out_root))
    names = [layout.sequence(str(s)) for s in (sequences or DEFAULT_SEQUENCES[dataset])]
    if len(set(names)) != len(names):
        raise SsckitError(f"sequences listed twice: {', '.join(names)}")
    return {name: generate_sequence(layout, name, frames, seed, image_scale, progress) for name in names}


__all__ = ["DEFAULT_SEQUENCES", "FRAME_STEP", "MATERIALS", "chromaticity", "colour_family", "generate"]
