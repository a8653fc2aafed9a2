"""Procedural street world: a ground-class raster plus solid primitives, and the ego trajectory through it.

World frame: x along the main street, y to the left, z up; the road surface is z = 0. The street is cut into
40 m blocks along x; each block draws its content from its own random generator (seeded by the sequence seed and
the block index), so a longer sequence contains the same world as a shorter one. Each side of a block gets a
road edge (optional parking lane), a raised sidewalk with street furniture and one or more lots (buildings, front
yards with fences and trees, parks, parking lots); some blocks hold a cross street with a zebra crossing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssckit.data.synth.layout import BlockBuilder, StreetProfile
from ssckit.data.synth.primitives import Primitives

BLOCK = 40.0  # m of street per block
LIDAR_HEIGHT = 1.73  # m above the road (KITTI Velodyne)
GROUND_RES = 0.1  # m per ground raster cell
GROUND_HALF_WIDTH = 64.0  # m of raster on each side of the street axis
BEHIND = 60.0  # m of world behind the first pose
AHEAD = 130.0  # m of world beyond the last pose


@dataclass
class GroundMap:
    """Raster of raw ground ids at z = 0 (x0, y0: world position of cell (0, 0)'s corner)."""

    raw: np.ndarray  # (NX, NY) uint16
    x0: float
    y0: float
    res: float
    default: int = 72  # terrain outside the raster

    def lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ix = np.floor((x - self.x0) / self.res).astype(np.int64)
        iy = np.floor((y - self.y0) / self.res).astype(np.int64)
        ok = (ix >= 0) & (ix < self.raw.shape[0]) & (iy >= 0) & (iy < self.raw.shape[1])
        out = np.full(np.shape(x), self.default, dtype=np.uint16)
        out[ok] = self.raw[ix[ok], iy[ok]]
        return out


@dataclass
class Trajectory:
    """Ego motion: smooth speed along the street in the right lane, with small sway, pitch and roll."""

    v0: float
    v_amp: float
    v_omega: float
    v_phase: float
    lane_y: float
    sway: float
    sway_omega: float
    sway_phase: float
    tilt: float
    tilt_omega: float
    dt: float = 0.1037  # s between LiDAR sweeps (KITTI's ~10 Hz)

    def time(self, index: np.ndarray | int) -> np.ndarray:
        return np.asarray(index, dtype=np.float64) * self.dt

    def position(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.v0 * t + self.v_amp / self.v_omega * (np.cos(self.v_phase) - np.cos(self.v_omega * t + self.v_phase))
        y = self.lane_y + self.sway * np.sin(self.sway_omega * t + self.sway_phase)
        return x, y

    def pose(self, index: int) -> np.ndarray:
        """4x4 world <- LiDAR transform at frame ``index`` (LiDAR frame: x forward, y left, z up)."""
        t = float(self.time(index))
        x, y = self.position(np.array(t))
        vx = self.v0 + self.v_amp * np.sin(self.v_omega * t + self.v_phase)
        vy = self.sway * self.sway_omega * np.cos(self.sway_omega * t + self.sway_phase)
        yaw = np.arctan2(vy, vx)
        pitch = self.tilt * np.sin(self.tilt_omega * t)
        roll = 0.7 * self.tilt * np.sin(1.3 * self.tilt_omega * t + 1.0)
        cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        pose = np.eye(4)
        pose[:3, :3] = rz @ ry @ rx
        pose[:3, 3] = (float(x), float(y), LIDAR_HEIGHT + 0.01 * np.sin(3.1 * t))
        return pose


@dataclass
class Lighting:
    sun: np.ndarray  # (3,) unit vector towards the sun
    tint: np.ndarray  # (3,) per-channel gain of the sequence
    exposure_amp: float
    exposure_omega: float

    def exposure(self, t: float) -> float:
        return 1.0 + self.exposure_amp * np.sin(self.exposure_omega * t)


@dataclass
class World:
    prims: Primitives
    ground: GroundMap
    trajectory: Trajectory
    lighting: Lighting
    texture_seed: int


def _rng(seed: int, salt: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in (seed, salt, *keys)]))


def make_trajectory(seed: int, salt: int, road_half: float) -> Trajectory:
    rng = _rng(seed, salt, 1)
    return Trajectory(
        v0=rng.uniform(7.0, 9.5), v_amp=rng.uniform(0.5, 2.5), v_omega=rng.uniform(0.08, 0.25),
        v_phase=rng.uniform(0, 2 * np.pi), lane_y=-road_half / 2, sway=rng.uniform(0.05, 0.25),
        sway_omega=rng.uniform(0.1, 0.4), sway_phase=rng.uniform(0, 2 * np.pi), tilt=rng.uniform(0.001, 0.006),
        tilt_omega=rng.uniform(0.5, 2.0),
    )


def build_world(seed: int, salt: int, last_index: int) -> World:
    """The world of one sequence, covering the trajectory up to frame ``last_index`` (plus margins)."""
    rng = _rng(seed, salt, 0)
    profile = StreetProfile.sample(rng)
    trajectory = make_trajectory(seed, salt, profile.road_half)
    sun_az, sun_el = rng.uniform(0, 2 * np.pi), rng.uniform(np.radians(25), np.radians(60))
    lighting = Lighting(
        sun=np.array([np.cos(sun_el) * np.cos(sun_az), np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el)]),
        tint=1.0 + rng.uniform(-0.03, 0.03, size=3), exposure_amp=rng.uniform(0.02, 0.08),
        exposure_omega=rng.uniform(0.05, 0.3),
    )
    x_end = float(trajectory.position(trajectory.time(last_index))[0]) + AHEAD
    b0, b1 = int(np.floor(-BEHIND / BLOCK)), int(np.ceil(x_end / BLOCK))
    x0, y0 = b0 * BLOCK, -GROUND_HALF_WIDTH
    nx, ny = int(round((b1 - b0) * BLOCK / GROUND_RES)), int(round(2 * GROUND_HALF_WIDTH / GROUND_RES))
    ground = GroundMap(np.full((nx, ny), 72, dtype=np.uint16), x0, y0, GROUND_RES)
    parts = []
    instance = 1
    for b in range(b0, b1):
        builder = BlockBuilder(_rng(seed, salt, 2, b), profile, ground, b * BLOCK, BLOCK, instance,
                               near_start=b * BLOCK < 15.0, lane_y=trajectory.lane_y)
        parts.append(builder.build())
        instance = builder.next_instance
    return World(Primitives.concat(parts), ground, trajectory, lighting, int(seed) * 7919 + salt)
