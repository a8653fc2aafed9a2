"""Sensors of the synthetic world: shaded camera images, stereo-like depth and a simulated LiDAR scan.

Image formation per pixel: class colour x object brightness x procedural texture (world-anchored value noise and
patterns: facade windows, paving joints, fence slats, foliage) x Lambertian sun + ambient light, blended with haze
by distance, sky where nothing is hit, then exposure, tint, vignetting and sensor noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssckit.data.synth.materials import FACADE, HAZE, LEAVES, SKY_HORIZON, SKY_ZENITH, SLATS, material_table
from ssckit.data.synth.raycast import Hits, RayGrid, cast, lidar_grid
from ssckit.data.synth.world import World

CAMERA_RANGE = 150.0  # m of depth rendered; beyond is sky/haze
HAZE_DISTANCE = 1000.0  # m: haze weight 1 - exp(-d / HAZE_DISTANCE)
LIDAR_ROWS, LIDAR_COLS = 64, 2048  # HDL-64E-like: 64 beams, ~0.18 deg azimuth steps
LIDAR_TOP, LIDAR_BOTTOM = 2.0, -24.8  # degrees
LIDAR_RANGE = 80.0
LIDAR_NOISE = 0.015  # m
LIDAR_DROPOUT = 0.015
PANO_ROWS, PANO_COLS = 256, 1024  # visibility panoramas: ~0.7 deg x 0.35 deg over the whole sphere
PANO_TOP, PANO_BOTTOM, PANO_RANGE = 89.0, -89.0, 100.0
_MATERIALS = material_table()


def _hash(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic integer hash of lattice points -> uniform [0, 1) floats."""
    h = (ix.astype(np.uint64) * np.uint64(0x9E3779B185EBCA87)) ^ (iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= iz.astype(np.uint64) * np.uint64(0x165667B19E3779F9) ^ np.uint64(seed & 0xFFFFFFFF)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def value_noise(p: np.ndarray, scale: float, seed: int, smooth: bool) -> np.ndarray:
    """Value noise in [-0.5, 0.5) of world points (N, 3) on a lattice of ``scale`` metres (trilinear if smooth)."""
    q = p / scale
    i = np.floor(q).astype(np.int64)
    if not smooth:
        return _hash(i[:, 0], i[:, 1], i[:, 2], seed) - 0.5
    f = q - i
    f = f * f * (3 - 2 * f)
    out = np.zeros(len(p))
    for dx in (0, 1):  # the 8 lattice corners around each point
        for dy in (0, 1):
            for dz in (0, 1):
                w = np.where((dx, dy, dz), f, 1 - f).prod(axis=1)
                out += w * _hash(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, seed)
    return out - 0.5


def _texture(world: World, hits: Hits, pts: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """Relative brightness of the hit points ``pts`` (N, 3) of pixels ``sel`` (N,) of ``hits``."""
    raw = hits.raw.reshape(-1)[sel]
    prim = hits.prim.reshape(-1)[sel]
    n = hits.normal.reshape(-1, 3)[sel]
    seed = world.texture_seed
    mat = _MATERIALS
    tex = 1.0 + mat.grain[raw] * 2.0 * value_noise(pts, 0.06, seed, smooth=False)
    tex += mat.patches[raw] * 2.0 * value_noise(pts, 1.3, seed + 1, smooth=True)
    pattern = mat.pattern[raw]
    # horizontal coordinate along a vertical face: x for faces looking along y, y otherwise
    along = np.where(np.abs(n[:, 1]) > np.abs(n[:, 0]), pts[:, 0], pts[:, 1])
    vertical = np.abs(n[:, 2]) < 0.5
    obj = np.maximum(prim, 0)
    top = world.prims.centre[obj, 2] + world.prims.half[obj, 2]
    floor_pos = (pts[:, 2] - 0.6) / 3.0
    window = ((pattern == FACADE) & vertical & (np.mod(along / 3.2, 1.0) > 0.3) & (np.mod(along / 3.2, 1.0) < 0.75)
              & (np.mod(floor_pos, 1.0) > 0.35) & (np.mod(floor_pos, 1.0) < 0.8) & (pts[:, 2] > 1.5)
              & (pts[:, 2] < top - 0.8))
    tex = np.where(window, tex * 0.45, tex)
    joints = (pattern == SLATS) & ((np.mod(along / 0.18, 1.0) < 0.3) & vertical |
                                   ~vertical & ((np.mod(pts[:, 0] / 0.5, 1.0) < 0.07) |
                                                (np.mod(pts[:, 1] / 0.5, 1.0) < 0.07)))
    tex = np.where(joints, tex * 0.75, tex)
    leaves = pattern == LEAVES
    tex = np.where(leaves, tex + 0.25 * value_noise(pts, 0.25, seed + 2, smooth=True), tex)
    return np.maximum(tex, 0.05)


def shade(world: World, hits: Hits, grid: RayGrid, time: float, rng: np.random.Generator) -> np.ndarray:
    """The camera image (H, W, 3) uint8 of a cast."""
    H, W = grid.shape
    light = world.lighting
    rgb = np.empty((H * W, 3))
    t = hits.t.reshape(-1)
    hit = np.flatnonzero(np.isfinite(t))
    dirs = grid.dirs.reshape(-1, 3)
    # sky: horizon -> zenith gradient by ray elevation
    elev = dirs[:, 2] / np.linalg.norm(dirs, axis=1)
    a = np.clip(elev / 0.5, 0.0, 1.0)[:, None]
    rgb[:] = SKY_HORIZON * (1 - a) + SKY_ZENITH * a
    if len(hit):
        pts = hits.points(grid).reshape(-1, 3)[hit]
        raw = hits.raw.reshape(-1)[hit]
        prim = hits.prim.reshape(-1)[hit]
        n = hits.normal.reshape(-1, 3)[hit].astype(np.float64)
        base = _MATERIALS.colour[raw].astype(np.float64)
        obj_shade = np.where(prim >= 0, world.prims.shade[np.maximum(prim, 0)], 1.0)
        diffuse = np.clip(n[:, 0] * light.sun[0] + n[:, 1] * light.sun[1] + n[:, 2] * light.sun[2], 0.0, 1.0)
        lit = 0.55 + 0.5 * diffuse
        colour = base * (obj_shade * lit * _texture(world, hits, pts, hit))[:, None]
        dist = np.linalg.norm(pts - grid.origin, axis=1)
        haze = (1.0 - np.exp(-dist / HAZE_DISTANCE))[:, None]
        rgb[hit] = colour * (1 - haze) + HAZE * haze
    rgb = rgb.reshape(H, W, 3) * (light.exposure(time) * light.tint)
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    rgb *= (1.0 - 0.12 * (xx ** 2 + yy ** 2) / 2)[..., None]
    rgb += rng.normal(0.0, 2.0, size=rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def stereo_depth(depth: np.ndarray, bf: float, rng: np.random.Generator, max_depth: float = 300.0) -> np.ndarray:
    """Stereo-network-like depth from true depth: noisy, edge-smoothed disparity ``bf / depth`` -> depth (float32).

    Disparity gets a 3x3 box blur (mixed foreground/background at edges, as stereo networks produce), Gaussian
    noise of 0.25 px scaled with the image, and is floored at ``bf / max_depth`` so depth stays finite (sky too).
    """
    from scipy.ndimage import uniform_filter

    disp = np.where(np.isfinite(depth), bf / np.maximum(depth, 1e-3), 0.0)
    disp = uniform_filter(disp, size=3, mode="nearest")
    px = bf / 388.0  # disparity units relative to full-size KITTI (bf ~ 388 px m)
    disp = disp + rng.normal(0.0, 0.25 * px, size=disp.shape)
    return (bf / np.maximum(disp, bf / max_depth)).astype(np.float32)


@dataclass
class RangeView:
    """Range per ray of a spherical ray grid (rows evenly from ``top`` to ``bottom`` degrees, columns from -pi);
    ``max_range`` where nothing was hit, -inf where the sensor got no answer."""

    range_image: np.ndarray  # (rows, cols) float32
    pose: np.ndarray  # (4, 4) world <- sensor
    top: float
    bottom: float
    max_range: float


def panorama(world: World, pose: np.ndarray, time: float) -> RangeView:
    """Full-sphere range image from ``pose``: what is in line of sight from there (decides ``.invalid``)."""
    grid = lidar_grid(pose, PANO_ROWS, PANO_COLS, PANO_TOP, PANO_BOTTOM)
    t = cast(world, grid, time, PANO_RANGE).t
    return RangeView(np.where(np.isfinite(t), t, PANO_RANGE).astype(np.float32), pose, PANO_TOP, PANO_BOTTOM,
                     PANO_RANGE)


@dataclass
class Scan:
    """One LiDAR sweep: the valid returns in row-major beam order, and the measured ranges as a RangeView."""

    points: np.ndarray  # (N, 4) float32: x, y, z (LiDAR frame), remission
    raw: np.ndarray  # (N,) uint16
    instance: np.ndarray  # (N,) uint16
    view: RangeView


def lidar_scan(world: World, pose: np.ndarray, time: float, rng: np.random.Generator) -> Scan:
    grid = lidar_grid(pose, LIDAR_ROWS, LIDAR_COLS, LIDAR_TOP, LIDAR_BOTTOM)
    hits = cast(world, grid, time, LIDAR_RANGE)
    rng_t = hits.t + rng.normal(0.0, LIDAR_NOISE, size=hits.t.shape)
    valid = np.isfinite(hits.t) & (rng.random(hits.t.shape) >= LIDAR_DROPOUT)
    range_image = np.where(np.isfinite(hits.t), rng_t, LIDAR_RANGE).astype(np.float32)
    range_image[np.isfinite(hits.t) & ~valid] = -np.inf
    sel = np.flatnonzero(valid.reshape(-1))
    dirs = grid.dirs.reshape(-1, 3)[sel]
    world_pts = grid.origin + rng_t.reshape(-1)[sel, None] * dirs
    local = np.einsum("ji,nj->ni", grid.rotation, world_pts - grid.origin)  # R^T (p - o)
    raw = hits.raw.reshape(-1)[sel]
    cos_inc = np.abs((hits.normal.reshape(-1, 3)[sel] * dirs).sum(axis=1))
    remission = _MATERIALS.remission[raw] * (0.6 + 0.4 * cos_inc) + rng.normal(0.0, 0.03, size=len(sel))
    points = np.concatenate([local, np.clip(remission, 0.0, 1.0)[:, None]], axis=1).astype(np.float32)
    view = RangeView(range_image, pose, LIDAR_TOP, LIDAR_BOTTOM, LIDAR_RANGE)
    return Scan(points, raw, hits.instance.reshape(-1)[sel], view)
