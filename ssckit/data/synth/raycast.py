"""Ray casting of the synthetic world for a grid of rays (a pinhole camera or a spinning LiDAR).

Rays are cast against the ground plane z = 0 for all rays at once, then against each primitive for the rays inside
that primitive's projected bounding rectangle only (a per-object loop over vectorised ray batches, nearest objects
first, skipping objects that are hidden behind what was already hit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssckit.data.synth.primitives import intersect
from ssckit.data.synth.world import World

NEAR = 0.05


@dataclass
class RayGrid:
    """H x W rays from one origin. Pinhole rays have camera-z = 1 (t is depth); LiDAR rays are unit (t is range)."""

    origin: np.ndarray  # (3,) world
    rotation: np.ndarray  # (3, 3) world <- sensor
    dirs: np.ndarray  # (H, W, 3) world directions
    pinhole_k: np.ndarray | None = None  # (3, 3) for cameras
    elevation: tuple[float, float] | None = None  # (top, bottom) radians of the first / last LiDAR row

    @property
    def shape(self) -> tuple[int, int]:
        return self.dirs.shape[:2]


def camera_grid(K: np.ndarray, width: int, height: int, T_world_cam: np.ndarray) -> RayGrid:
    """Rays through the pixel centres (u, v integers) of a rectified camera with intrinsics ``K``."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], axis=-1)  # (H, W, 3)
    rot = T_world_cam[:3, :3]
    return RayGrid(T_world_cam[:3, 3].copy(), rot, np.einsum("ij,hwj->hwi", rot, cam), pinhole_k=K)


def lidar_grid(T_world_lidar: np.ndarray, rows: int, cols: int, top_deg: float, bottom_deg: float) -> RayGrid:
    """A spinning LiDAR: ``rows`` beams evenly from ``top_deg`` to ``bottom_deg``, ``cols`` azimuths from -pi."""
    el = np.radians(np.linspace(top_deg, bottom_deg, rows))
    az = -np.pi + (np.arange(cols) + 0.5) * (2 * np.pi / cols)
    el_, az_ = np.meshgrid(el, az, indexing="ij")
    local = np.stack([np.cos(el_) * np.cos(az_), np.cos(el_) * np.sin(az_), np.sin(el_)], axis=-1)  # (H, W, 3)
    rot = T_world_lidar[:3, :3]
    return RayGrid(T_world_lidar[:3, 3].copy(), rot, np.einsum("ij,hwj->hwi", rot, local), elevation=(el[0], el[-1]))


@dataclass
class Hits:
    t: np.ndarray  # (H, W) float64 ray parameter of the first hit (inf: nothing)
    prim: np.ndarray  # (H, W) int32 primitive index, -1 ground, -2 nothing
    normal: np.ndarray  # (H, W, 3) float32 world normal
    raw: np.ndarray  # (H, W) uint16 raw label (0: nothing)
    instance: np.ndarray  # (H, W) uint16

    def points(self, grid: RayGrid) -> np.ndarray:
        t = np.where(np.isfinite(self.t), self.t, 0.0)
        return grid.origin + t[..., None] * grid.dirs


def _bounds(grid: RayGrid, world: World, idx: np.ndarray, time: float) -> np.ndarray:
    """Rows/cols rectangle (M, 4) = r0, r1, c0, c1 (inclusive; cols may exceed W for LiDAR wrap) and lower bound
    of t (column 4) for primitives ``idx``."""
    H, W = grid.shape
    prims = world.prims.subset(idx)
    corners = prims.corners(time)  # (M, 8, 3)
    local = (corners - grid.origin) @ grid.rotation  # sensor frame
    out = np.zeros((len(idx), 5))
    if grid.pinhole_k is not None:
        K = grid.pinhole_k
        z = local[..., 2]
        front = (z > NEAR).all(axis=1)
        zc = np.maximum(z, NEAR)
        u = K[0, 0] * local[..., 0] / zc + K[0, 2]
        v = K[1, 1] * local[..., 1] / zc + K[1, 2]
        out[:, 0] = np.where(front, np.floor(v.min(1)) - 1, 0)
        out[:, 1] = np.where(front, np.ceil(v.max(1)) + 1, H - 1)
        out[:, 2] = np.where(front, np.floor(u.min(1)) - 1, 0)
        out[:, 3] = np.where(front, np.ceil(u.max(1)) + 1, W - 1)
        out[:, 4] = np.maximum(z.min(1), 0.0)
        out[:, :2] = np.clip(out[:, :2], 0, H - 1)
        out[:, 2:4] = np.clip(out[:, 2:4], 0, W - 1)
        out[(z <= NEAR).all(axis=1), 1] = -1  # entirely behind the camera: empty rectangle
        return out
    top, bottom = grid.elevation
    step = (top - bottom) / (H - 1)
    rho_min = prims.footprint_distance(time, grid.origin[:2])  # horizontal distance to the footprint
    rho_max = np.hypot(local[..., 0], local[..., 1]).max(1)
    zmin, zmax = local[..., 2].min(1), local[..., 2].max(1)
    el_hi = np.arctan2(zmax, np.where(zmax > 0, rho_min, rho_max))
    el_lo = np.arctan2(zmin, np.where(zmin < 0, rho_min, rho_max))
    out[:, 0] = np.clip(np.floor((top - el_hi) / step) - 1, 0, H - 1)
    out[:, 1] = np.clip(np.ceil((top - el_lo) / step) + 1, 0, H - 1)
    centre = prims.centres_at(time) - grid.origin
    c_local = centre @ grid.rotation
    az_c = np.arctan2(c_local[:, 1], c_local[:, 0])
    az = np.arctan2(local[..., 1], local[..., 0])
    rel = (az - az_c[:, None] + np.pi) % (2 * np.pi) - np.pi  # unwrapped around the centre's azimuth
    col = lambda a: (a + np.pi) / (2 * np.pi) * W - 0.5  # noqa: E731
    c0 = np.floor(col(az_c + rel.min(1))) - 1
    c1 = np.ceil(col(az_c + rel.max(1))) + 1
    inside = rho_min <= 0.0  # the sensor is above/below the object: every azimuth
    out[:, 2] = np.where(inside, 0, c0)
    out[:, 3] = np.where(inside, W - 1, np.minimum(c1, c0 + W - 1))
    out[:, 4] = np.maximum(np.linalg.norm(centre, axis=1) - np.linalg.norm(prims.half, axis=1), 0.0)
    return out


def cast(world: World, grid: RayGrid, time: float, max_dist: float) -> Hits:
    """First hits of all rays of ``grid`` with the world at ``time`` (seconds), up to ``max_dist`` along t."""
    H, W = grid.shape
    dz = grid.dirs[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(dz < -1e-9, -grid.origin[2] / dz, np.inf)
    t = np.where(t_ground <= max_dist, t_ground, np.inf)
    prim = np.where(np.isfinite(t), -1, -2).astype(np.int32)
    normal = np.zeros((H, W, 3), dtype=np.float32)
    normal[..., 2] = 1.0
    prims = world.prims
    centres = prims.centres_at(time)
    reach = np.linalg.norm(centres - grid.origin, axis=1) - np.linalg.norm(prims.half, axis=1)
    idx = np.flatnonzero(reach < max_dist)
    if len(idx):
        bounds = _bounds(grid, world, idx, time)
        order = np.argsort(bounds[:, 4], kind="stable")  # nearest first: later ones are often hidden
        for m, (r0, r1, c0, c1, t_low) in zip(idx[order], bounds[order]):
            if r1 < r0 or c1 < c0:
                continue
            rows = np.arange(int(r0), int(r1) + 1)
            cols = np.arange(int(c0), int(c1) + 1) % W
            sel = np.ix_(rows, cols)
            t_old = t[sel]
            if t_low > t_old.max():
                continue
            d = grid.dirs[sel].reshape(-1, 3)  # (n, 3)
            t_new, n_new = intersect(int(prims.kind[m]), centres[m], prims.half[m], float(prims.yaw[m]),
                                     grid.origin, d)
            t_new = t_new.reshape(t_old.shape)
            better = t_new < t_old
            if not better.any():
                continue
            t[sel] = np.where(better, t_new, t_old)
            prim[sel] = np.where(better, m, prim[sel])
            normal[sel] = np.where(better[..., None], n_new.reshape(*t_old.shape, 3), normal[sel])
    t = np.where(t <= max_dist, t, np.inf)
    prim = np.where(np.isfinite(t), prim, -2)
    hits = Hits(t, prim, normal, np.zeros((H, W), np.uint16), np.zeros((H, W), np.uint16))
    on_obj = prim >= 0
    hits.raw[on_obj] = prims.raw[prim[on_obj]]
    hits.instance[on_obj] = prims.instance[prim[on_obj]]
    on_ground = prim == -1
    if on_ground.any():
        p = hits.points(grid)[on_ground]
        hits.raw[on_ground] = world.ground.lookup(p[:, 0], p[:, 1])
    return hits
