"""Label tables of SemanticKITTI SSC (20 classes) and SSCBench-KITTI-360 (19 classes), all in one place.

Raw ids are the SemanticKITTI point/voxel ids stored in ``.label`` files; learning ids are 0..N-1 (0 = empty) and
255 = ignore. The SSC lookup table follows semantic-kitti-api's ``evaluate_completion.py``: raw ids whose learning id
is 0 (other than raw 0 itself: outlier, other-structure, other-object, unused ids) become 255.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE = 255
LUT_SIZE = 259 + 100  # max raw key + 100, as the official evaluator builds it


@dataclass(frozen=True)
class LabelTable:
    """Everything about one dataset's classes: names, raw<->learning maps, palette and CE weights."""

    name: str
    class_names: tuple[str, ...]
    learning_map: dict[int, int]  # raw id -> learning id (only raw ids with a meaning; others map to ignore)
    learning_map_inv: dict[int, int]  # learning id -> raw id written to submissions
    class_frequencies: tuple[float, ...]  # voxel counts of the training split (MonoScene / SSCBench params.py)
    palette: tuple[tuple[int, int, int], ...]  # RGB per learning id
    lut: np.ndarray = field(init=False, repr=False, compare=False)  # uint8 [LUT_SIZE]: raw -> learning/255

    def __post_init__(self) -> None:
        lut = np.full(LUT_SIZE, IGNORE, dtype=np.uint8)
        for raw, learn in self.learning_map.items():
            lut[raw] = learn
        lut[lut == 0] = IGNORE  # raw ids mapped to "empty" are unlabelled/other: ignore in SSC
        lut[0] = 0
        lut.setflags(write=False)
        object.__setattr__(self, "lut", lut)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def valid_raw_ids(self) -> np.ndarray:
        """Raw ids that map to a learning class (what a prediction may contain)."""
        return np.flatnonzero(self.lut != IGNORE)

    def class_weights(self, eps: float = 1e-6) -> np.ndarray:
        """Cross-entropy weights 1 / ln(f + eps) (Symphonies uses eps 1e-6; MonoScene 1e-3, equal to 4 dp)."""
        return (1.0 / np.log(np.asarray(self.class_frequencies, dtype=np.float64) + eps)).astype(np.float32)

    def to_learning(self, raw: np.ndarray) -> np.ndarray:
        """Raw ids -> learning ids (uint8, 255 = ignore). Raw ids outside the table raise ValueError."""
        raw = np.asarray(raw)
        if raw.size and (raw.min() < 0 or raw.max() >= LUT_SIZE):
            bad = raw[(raw < 0) | (raw >= LUT_SIZE)]
            raise ValueError(f"raw label id {int(bad.flat[0])} is outside the {self.name} label table")
        return self.lut[raw]

    def to_raw(self, learning: np.ndarray) -> np.ndarray:
        """Learning ids 0..N-1 -> raw uint16 ids for submissions (inverse map)."""
        inv = np.zeros(256, dtype=np.uint16)
        for learn, raw in self.learning_map_inv.items():
            inv[learn] = raw
        learning = np.asarray(learning)
        if learning.size and int(learning.max()) >= self.num_classes:
            raise ValueError(f"learning id {int(learning.max())} >= {self.num_classes} classes of {self.name}")
        return inv[learning]


SEMANTIC_KITTI = LabelTable(
    name="semantic_kitti",
    class_names=(
        "empty", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
        "road", "parking", "sidewalk", "other-ground", "building", "fence", "vegetation", "trunk", "terrain",
        "pole", "traffic-sign",
    ),
    learning_map={
        0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10, 48: 11,
        49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0, 252: 1, 253: 7,
        254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
    },
    learning_map_inv={
        0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48, 12: 49, 13: 50,
        14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
    },
    class_frequencies=(
        5.41773033e09, 1.57835390e07, 1.25136e05, 1.18809e05, 6.46799e05, 8.21951e05, 2.62978e05, 2.83696e05,
        2.04750e05, 6.16887030e07, 4.50296100e06, 4.48836500e07, 2.26992300e06, 5.68402180e07, 1.57196520e07,
        1.58442623e08, 2.06162300e06, 3.69705220e07, 1.15198800e06, 3.34146e05,
    ),
    # semantic-kitti-api colours (BGR in its yaml), given here as RGB
    palette=(
        (0, 0, 0), (100, 150, 245), (100, 230, 245), (30, 60, 150), (80, 30, 180), (0, 0, 255), (255, 30, 30),
        (255, 40, 200), (150, 30, 90), (255, 0, 255), (255, 150, 255), (75, 0, 75), (175, 0, 75), (255, 200, 0),
        (255, 120, 50), (0, 175, 0), (135, 60, 0), (150, 240, 80), (255, 240, 150), (255, 0, 0),
    ),
)

KITTI_360 = LabelTable(
    name="kitti_360",
    class_names=(
        "empty", "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "road", "parking", "sidewalk",
        "other-ground", "building", "fence", "vegetation", "terrain", "pole", "traffic-sign", "other-structure",
        "other-object",
    ),
    learning_map={
        0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 0, 32: 0, 40: 7, 44: 8, 48: 9,
        49: 10, 50: 11, 51: 12, 52: 17, 60: 7, 70: 13, 71: 0, 72: 14, 80: 15, 81: 16, 99: 18, 252: 1, 253: 0,
        254: 6, 255: 0, 256: 5, 257: 5, 258: 4, 259: 5,
    },
    learning_map_inv={
        0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 40, 8: 44, 9: 48, 10: 49, 11: 50, 12: 51, 13: 70,
        14: 72, 15: 80, 16: 81, 17: 52, 18: 99,
    },
    class_frequencies=(
        2264087502, 20098728, 104972, 96297, 1149426, 4051087, 125103, 105540713, 16292249, 45297267, 14454132,
        110397082, 6766219, 295883213, 50037503, 1561069, 406330, 30516166, 1950115,
    ),
    palette=(
        (0, 0, 0), (100, 150, 245), (100, 230, 245), (30, 60, 150), (80, 30, 180), (0, 0, 255), (255, 30, 30),
        (255, 0, 255), (255, 150, 255), (75, 0, 75), (175, 0, 75), (255, 200, 0), (255, 120, 50), (0, 175, 0),
        (150, 240, 80), (255, 240, 150), (255, 0, 0), (255, 150, 0), (50, 255, 255),
    ),
)

LABEL_TABLES: dict[str, LabelTable] = {"semantic_kitti": SEMANTIC_KITTI, "kitti_360": KITTI_360}


def get_label_table(dataset: str) -> LabelTable:
    """The label table of ``dataset`` ("semantic_kitti" or "kitti_360")."""
    try:
        return LABEL_TABLES[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(LABEL_TABLES)}") from None
