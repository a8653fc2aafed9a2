"""Dataset readers: ``DATASETS[name](root, split=..., ...)``; see docs/datasets.md for the folder layouts."""
from __future__ import annotations

from ssckit.data.datasets.base import FrameId, SSCDataset, shift_v10_grid
from ssckit.data.datasets.kitti_360 import KITTI360
from ssckit.data.datasets.semantic_kitti import SemanticKITTI
from ssckit.errors import SsckitError

DATASETS: dict[str, type[SSCDataset]] = {"semantic_kitti": SemanticKITTI, "kitti_360": KITTI360}


def get_dataset_class(name: str) -> type[SSCDataset]:
    """The reader class registered as ``name``; an unknown name lists the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise SsckitError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}") from None


__all__ = ["DATASETS", "FrameId", "KITTI360", "SSCDataset", "SemanticKITTI", "get_dataset_class", "shift_v10_grid"]
