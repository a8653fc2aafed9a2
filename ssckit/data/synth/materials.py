"""Appearance of every raw SemanticKITTI id in the synthetic world: colour, LiDAR remission, texture.

The colours are deliberately distinct in chromaticity (r, g, b) / (r + g + b) from one learning class to the next,
so that appearance carries the class: shading, exposure and texture only scale brightness (plus a little noise and
haze). Moving-object ids share the material of their static twin.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ssckit.data.labels import LUT_SIZE

# pattern ids of procedural textures
PLAIN, FACADE, SLATS, LEAVES, WINDOWS = 0, 1, 2, 3, 4


class Material(NamedTuple):
    colour: tuple[int, int, int]  # base RGB (0..255) under unit lighting
    remission: float  # LiDAR reflectivity 0..1
    grain: float  # fine texture amplitude (relative brightness)
    patches: float  # coarse texture amplitude
    pattern: int  # PLAIN / FACADE / SLATS / LEAVES / WINDOWS


MATERIALS: dict[int, Material] = {
    10: Material((175, 40, 50), 0.30, 0.03, 0.02, WINDOWS),  # car
    11: Material((40, 165, 175), 0.25, 0.05, 0.00, PLAIN),  # bicycle
    13: Material((240, 130, 30), 0.30, 0.03, 0.02, WINDOWS),  # bus -> other-vehicle
    15: Material((150, 55, 175), 0.25, 0.04, 0.00, PLAIN),  # motorcycle
    18: Material((210, 190, 40), 0.30, 0.03, 0.03, WINDOWS),  # truck
    20: Material((240, 130, 30), 0.30, 0.03, 0.03, WINDOWS),  # other-vehicle
    30: Material((225, 110, 175), 0.20, 0.06, 0.00, PLAIN),  # person
    31: Material((100, 60, 210), 0.20, 0.06, 0.00, PLAIN),  # bicyclist
    32: Material((30, 95, 75), 0.20, 0.06, 0.00, PLAIN),  # motorcyclist
    40: Material((86, 90, 112), 0.18, 0.10, 0.08, PLAIN),  # road
    44: Material((128, 92, 132), 0.20, 0.08, 0.06, PLAIN),  # parking
    48: Material((185, 160, 118), 0.28, 0.08, 0.05, SLATS),  # sidewalk (paving joints)
    49: Material((165, 115, 45), 0.22, 0.10, 0.08, PLAIN),  # other-ground
    50: Material((185, 105, 95), 0.35, 0.05, 0.10, FACADE),  # building
    51: Material((100, 155, 115), 0.30, 0.05, 0.04, SLATS),  # fence
    52: Material((105, 150, 165), 0.30, 0.05, 0.06, PLAIN),  # other-structure
    60: Material((228, 228, 222), 0.70, 0.05, 0.03, PLAIN),  # lane-marking -> road
    70: Material((50, 125, 45), 0.45, 0.20, 0.10, LEAVES),  # vegetation
    71: Material((100, 45, 35), 0.35, 0.10, 0.02, PLAIN),  # trunk
    72: Material((135, 165, 55), 0.40, 0.14, 0.12, PLAIN),  # terrain
    80: Material((60, 100, 140), 0.40, 0.03, 0.00, PLAIN),  # pole
    81: Material((30, 70, 215), 0.90, 0.02, 0.00, PLAIN),  # traffic-sign
    99: Material((200, 200, 110), 0.30, 0.05, 0.02, PLAIN),  # other-object
}
MOVING_TWIN = {252: 10, 253: 31, 254: 30, 255: 32, 256: 16, 257: 13, 258: 18, 259: 20}
MATERIALS[16] = MATERIALS[20]  # on-rails -> other-vehicle
for _moving, _static in MOVING_TWIN.items():
    MATERIALS[_moving] = MATERIALS[_static]

SKY_HORIZON = np.array([205.0, 215.0, 230.0])
SKY_ZENITH = np.array([105.0, 145.0, 210.0])
HAZE = np.array([190.0, 198.0, 212.0])


class MaterialTable(NamedTuple):
    """Per raw id lookup arrays (length LUT_SIZE)."""

    colour: np.ndarray  # (L, 3) float32
    remission: np.ndarray  # (L,) float32
    grain: np.ndarray  # (L,) float32
    patches: np.ndarray  # (L,) float32
    pattern: np.ndarray  # (L,) int8


def material_table() -> MaterialTable:
    colour = np.full((LUT_SIZE, 3), 128.0, dtype=np.float32)
    remission = np.full(LUT_SIZE, 0.2, dtype=np.float32)
    grain = np.zeros(LUT_SIZE, dtype=np.float32)
    patches = np.zeros(LUT_SIZE, dtype=np.float32)
    pattern = np.zeros(LUT_SIZE, dtype=np.int8)
    for raw, m in MATERIALS.items():
        colour[raw] = m.colour
        remission[raw] = m.remission
        grain[raw] = m.grain
        patches[raw] = m.patches
        pattern[raw] = m.pattern
    return MaterialTable(colour, remission, grain, patches, pattern)


def chromaticity(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) RGB -> (..., 3) rgb / (r + g + b): brightness-free colour."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb / np.maximum(rgb.sum(axis=-1, keepdims=True), 1e-6)


def colour_family(rgb: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Learning id of the material whose chromaticity is nearest to each pixel's, among the materials of the
    classes of the dataset (``lut``: its raw -> learning table; ignored classes are left out). (..., 3) -> (...)."""
    raws = np.array([r for r in sorted(MATERIALS) if lut[r] != 255], dtype=np.int64)
    ref = chromaticity(np.array([MATERIALS[r].colour for r in raws], dtype=np.float64))  # (R, 3)
    ch = chromaticity(rgb)
    d = ((ch[..., None, :] - ref) ** 2).sum(axis=-1)  # (..., R)
    return lut[raws[np.argmin(d, axis=-1)]]
