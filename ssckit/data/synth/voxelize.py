"""Voxel files of one SSC frame from the synthetic world (SemanticKITTI grid: 256 x 256 x 32 voxels of 0.2 m,
origin (0, -25.6, -2.0) in the LiDAR frame, [x][y][z] order).

- ``.label``: the world rasterised at the frame's time: a voxel takes the raw id of the highest-priority primitive
  whose solid (grown by the voxel's half extent) contains its centre, else the ground class if it reaches below the
  ground surface, else 0.
- ``.bin``: voxels holding at least one point of the frame's own LiDAR scan.
- ``.invalid``: voxels in line of sight of no pose of a window along the trajectory (like the real data, where
  free space above the scene counts as observed): a voxel is seen from a pose when it is not behind the range of
  the nearest ray (+ a margin) of a full-sphere range image rendered there; voxels holding a point of the frame's
  own scan are seen. Unseen voxels get label 0, as only observed surfaces are labelled in the real data.
  (KITTI-360 uses the LiDAR sweeps' range images instead: only what the beams reached is valid, as in SSCBench.)
- ``.occluded``: voxels not seen as free from the current pose, plus ``.bin`` and ``.invalid`` (a superset of both,
  as in the real data).
"""
from __future__ import annotations

import numpy as np

from ssckit.data.synth.primitives import inside
from ssckit.data.synth.render import RangeView
from ssckit.data.synth.world import World

VOXEL = 0.2
ORIGIN = np.array([0.0, -25.6, -2.0])
SEEN_MARGIN = 0.2  # m behind the measured range that still counts as observed


def _axes(grid: tuple[int, int, int]) -> list[np.ndarray]:
    return [ORIGIN[a] + (np.arange(grid[a]) + 0.5) * VOXEL for a in range(3)]


def rasterize(world: World, pose: np.ndarray, time: float, grid: tuple[int, int, int]) -> np.ndarray:
    """Raw label grid (X, Y, Z) uint16 of the world at ``time`` in the LiDAR frame ``pose`` (world <- LiDAR)."""
    ax, ay, az = _axes(grid)
    R, t = pose[:3, :3], pose[:3, 3]
    # ground: columns take the ground class at their world xy; voxels whose bottom is below z = 0 are ground
    z_ground_local = -t[2]
    cx = R[0, 0] * ax[:, None] + R[0, 1] * ay[None, :] + R[0, 2] * z_ground_local + t[0]  # (X, Y)
    cy = R[1, 0] * ax[:, None] + R[1, 1] * ay[None, :] + R[1, 2] * z_ground_local + t[1]
    column = world.ground.lookup(cx, cy)
    zw = (R[2, 0] * ax[:, None, None] + R[2, 1] * ay[None, :, None] + R[2, 2] * az[None, None, :] + t[2])  # (X, Y, Z)
    labels = np.where(zw - VOXEL / 2 < 0.0, column[:, :, None], 0).astype(np.uint16)

    prims = world.prims
    centres = prims.centres_at(time)
    corners = prims.corners(time)  # (M, 8, 3)
    local = (corners - t) @ R  # LiDAR frame
    lo = np.floor((local.min(axis=1) - ORIGIN) / VOXEL).astype(np.int64) - 1
    hi = np.floor((local.max(axis=1) - ORIGIN) / VOXEL).astype(np.int64) + 1
    dims = np.array(grid)
    overlap = ((hi >= 0) & (lo < dims)).all(axis=1)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, dims - 1)
    for m in np.flatnonzero(overlap)[np.argsort(prims.priority[overlap], kind="stable")]:
        (i0, j0, k0), (i1, j1, k1) = lo[m], hi[m]
        px, py, pz = np.meshgrid(ax[i0:i1 + 1], ay[j0:j1 + 1], az[k0:k1 + 1], indexing="ij")
        pts = np.einsum("ij,nj->ni", R, np.stack([px, py, pz], axis=-1).reshape(-1, 3)) + t  # (n, 3) world
        yaw = float(prims.yaw[m])
        axes_world = np.array([[np.cos(yaw), np.sin(yaw), 0.0], [-np.sin(yaw), np.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
        margin = VOXEL / 2 * np.abs(axes_world @ R).sum(axis=1) - 0.02  # voxel half extent along the local axes
        ins = inside(int(prims.kind[m]), centres[m], prims.half[m], yaw, pts, margin)
        block = labels[i0:i1 + 1, j0:j1 + 1, k0:k1 + 1]
        block[ins.reshape(block.shape)] = prims.raw[m]
    return labels


def occupancy(points: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """Voxels (X, Y, Z) bool holding at least one of ``points`` (N, >=3) given in the grid's LiDAR frame."""
    idx = np.floor((points[:, :3] - ORIGIN) / VOXEL).astype(np.int64)
    ok = ((idx >= 0) & (idx < np.array(grid))).all(axis=1)
    occ = np.zeros(grid, dtype=bool)
    occ[idx[ok, 0], idx[ok, 1], idx[ok, 2]] = True
    return occ


def _seen_from(view: RangeView, pose: np.ndarray, centres: tuple[np.ndarray, np.ndarray, np.ndarray],
               free_only: bool) -> np.ndarray:
    """Which voxel ``centres`` (x, y, z flat float32 arrays in the grid frame of ``pose``) are in line of sight from
    ``view`` (inside its cone and not behind the range of the nearest ray + margin), or with ``free_only`` in front
    of it (seen as free)."""
    rows, cols = view.range_image.shape
    rel = (np.linalg.inv(view.pose) @ pose).astype(np.float32)  # view <- grid LiDAR
    x, y, z = (rel[i, 0] * centres[0] + rel[i, 1] * centres[1] + rel[i, 2] * centres[2] + rel[i, 3] for i in range(3))
    rho = np.hypot(x, y)
    dist = np.sqrt(rho * rho + z * z)
    el = np.arctan2(z, rho)
    az = np.arctan2(y, x)
    step = np.float32(np.radians(view.top - view.bottom) / (rows - 1))
    row = np.rint((np.float32(np.radians(view.top)) - el) / step).astype(np.int32)
    col = (np.floor((az + np.float32(np.pi)) * np.float32(cols / (2 * np.pi))).astype(np.int32)) % cols
    ok = (row >= 0) & (row < rows) & (dist <= view.max_range)
    measured = view.range_image.reshape(-1)[np.clip(row, 0, rows - 1) * cols + col]
    if free_only:
        return ok & (dist < measured - SEEN_MARGIN)
    return ok & (dist <= measured + SEEN_MARGIN)


def visibility(pose: np.ndarray, views: list[RangeView], grid: tuple[int, int, int],
               bin_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(invalid, occluded) bool grids of the frame at ``pose``. ``views[0]`` is seen from the frame's own pose, the
    others from a window of poses along the trajectory. Invalid: in line of sight of none of them (voxels with an
    input point always count as seen). Occluded: not seen as free from the frame's own pose, or input, or invalid."""
    ax, ay, az = (a.astype(np.float32) for a in _axes(grid))
    centres = tuple(np.broadcast_to(a.reshape(shape), grid).reshape(-1)  # (X*Y*Z,) flat [x][y][z] order
                    for a, shape in ((ax, (-1, 1, 1)), (ay, (1, -1, 1)), (az, (1, 1, -1))))
    free_now = _seen_from(views[0], pose, centres, free_only=True).reshape(grid)
    observed = bin_mask.copy()
    for view in views:
        observed |= _seen_from(view, pose, centres, free_only=False).reshape(grid)
    invalid = ~observed
    occluded = ~free_now | bin_mask | invalid
    return invalid, occluded
