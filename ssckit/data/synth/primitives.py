"""Solid primitives of the synthetic world: yaw-oriented boxes, vertical cylinders and vertical spheroids.

Every primitive is stored as one row of a :class:`Primitives` table (structure of arrays). The world frame is
x along the main street, y to the left, z up, ground at z = 0. Geometry is evaluated in the primitive's local frame
(centre at the origin, rotated by ``-yaw`` about z), where a box is ``|p| <= half``, a cylinder is
``x^2 + y^2 <= r^2, |z| <= half_z`` (r = half[0]) and a spheroid is ``|p / half| <= 1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOX, CYLINDER, SPHEROID = 0, 1, 2
_EPS = 1e-6


@dataclass
class Primitives:
    """A table of M primitives. Moving ones are at ``centre + velocity * time`` at a given time (seconds)."""

    kind: np.ndarray  # (M,) int8: BOX / CYLINDER / SPHEROID
    centre: np.ndarray  # (M, 3) float64, at time 0
    half: np.ndarray  # (M, 3) float64: half extents (cylinder: r, r, half height)
    yaw: np.ndarray  # (M,) float64: rotation about z
    velocity: np.ndarray  # (M, 3) float64 (m/s)
    raw: np.ndarray  # (M,) uint16: raw SemanticKITTI label id
    instance: np.ndarray  # (M,) uint16: instance id (0 = stuff)
    shade: np.ndarray  # (M,) float32: per-object brightness factor
    priority: np.ndarray  # (M,) int16: which primitive wins a voxel claimed by several

    def __len__(self) -> int:
        return len(self.kind)

    def centres_at(self, time: float) -> np.ndarray:
        return self.centre + self.velocity * time

    def corners(self, time: float) -> np.ndarray:
        """World corners of each primitive's oriented bounding box -> (M, 8, 3)."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        local = signs[None] * self.half[:, None, :]  # (M, 8, 3)
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        world = np.empty_like(local)
        world[..., 0] = c * local[..., 0] - s * local[..., 1]
        world[..., 1] = s * local[..., 0] + c * local[..., 1]
        world[..., 2] = local[..., 2]
        return world + self.centres_at(time)[:, None, :]

    def footprint_distance(self, time: float, xy: np.ndarray) -> np.ndarray:
        """Horizontal distance from point ``xy`` (2,) to each primitive's bounding rectangle -> (M,)."""
        d = np.asarray(xy)[:2] - self.centres_at(time)[:, :2]
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)  # (M, 2) in box axes
        out = np.maximum(np.abs(local) - self.half[:, :2], 0.0)
        return np.hypot(out[:, 0], out[:, 1])

    def subset(self, idx: np.ndarray) -> "Primitives":
        return Primitives(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list["Primitives"]) -> "Primitives":
        fields = Primitives.__dataclass_fields__
        return Primitives(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))


def rotate_z(v: np.ndarray, yaw: float) -> np.ndarray:
    """Rotate vectors (..., 3) by ``yaw`` about z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1], v[..., 2]], axis=-1)


def intersect(kind: int, centre: np.ndarray, half: np.ndarray, yaw: float, origin: np.ndarray,
              dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First hit of rays ``origin + t * dirs`` (dirs (N, 3)) with one primitive.

    Returns ``t`` (N,) (inf where missed or behind the origin) and world-frame unit normals (N, 3).
    """
    o = rotate_z((origin - centre)[None], -yaw)  # (1, 3) local origin
    d = rotate_z(dirs, -yaw)  # (N, 3) local directions
    if kind == BOX:
        t, n_local = _hit_box(o, d, half)
    elif kind == CYLINDER:
        t, n_local = _hit_cylinder(o, d, half)
    else:
        t, n_local = _hit_spheroid(o, d, half)
    return t, rotate_z(n_local, yaw)


def _hit_box(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d
        t1 = (-half - o) * inv
        t2 = (half - o) * inv
    lo = np.fmin(t1, t2)  # fmin/fmax drop the NaNs of 0 * inf (ray parallel to a slab, origin on its plane)
    hi = np.fmax(t1, t2)
    axis = np.argmax(lo, axis=1)
    t_near = np.take_along_axis(lo, axis[:, None], axis=1)[:, 0]
    t_far = hi.min(axis=1)
    hit = (t_far >= t_near) & (t_near > _EPS)
    t = np.where(hit, t_near, np.inf)
    normal = np.zeros_like(d)
    rows = np.arange(len(d))
    normal[rows, axis] = -np.sign(d[rows, axis])
    return t, normal


def _hit_cylinder(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r, hz = half[0], half[2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2.0 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    c = o[0, 0] ** 2 + o[0, 1] ** 2 - r * r
    disc = b * b - 4.0 * a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
        z_side = o[:, 2] + t_side * d[:, 2]
        side_ok = (disc >= 0) & (a > 0) & (t_side > _EPS) & (np.abs(z_side) <= hz)
        t_cap = (np.sign(o[:, 2]) * hz - o[:, 2]) / d[:, 2]  # the cap on the origin's side
        px = o[:, 0] + t_cap * d[:, 0]
        py = o[:, 1] + t_cap * d[:, 1]
        cap_ok = (np.abs(o[:, 2]) > hz) & (t_cap > _EPS) & (px * px + py * py <= r * r)
    t = np.where(side_ok, t_side, np.inf)
    t = np.where(cap_ok & (t_cap < t), t_cap, t)
    on_cap = cap_ok & (t == t_cap)
    p = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    normal = np.stack([p[:, 0] / r, p[:, 1] / r, np.zeros(len(d))], axis=1)
    normal[on_cap] = np.array([0.0, 0.0, 1.0]) * np.sign(o[0, 2])
    return t, normal


def _hit_spheroid(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    os_, ds = o / half, d / half  # unit-sphere space
    a = (ds * ds).sum(axis=1)
    b = 2.0 * (os_ * ds).sum(axis=1)
    c = float((os_ * os_).sum()) - 1.0
    disc = b * b - 4.0 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    t = np.where((disc >= 0) & (t > _EPS), t, np.inf)
    p = os_ + np.where(np.isfinite(t), t, 0.0)[:, None] * ds
    normal = p / half
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    return t, normal


def inside(kind: int, centre: np.ndarray, half: np.ndarray, yaw: float, points: np.ndarray,
           margin: np.ndarray) -> np.ndarray:
    """Which world ``points`` (N, 3) lie in the primitive grown by ``margin`` (3,) per local axis -> bool (N,)."""
    p = rotate_z(points - centre, -yaw)
    h = half + margin
    if kind == BOX:
        return (np.abs(p) <= h).all(axis=1)
    if kind == CYLINDER:
        r = half[0] + max(margin[0], margin[1])
        return (p[:, 0] ** 2 + p[:, 1] ** 2 <= r * r) & (np.abs(p[:, 2]) <= h[2])
    return ((p / h) ** 2).sum(axis=1) <= 1.0
