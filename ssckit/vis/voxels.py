"""Voxel scenes as shaded cubes, headless and vectorised: exposed faces, Lambertian shading, a z-buffer rasteriser.

Conventions: the grid is [x][y][z] in the LiDAR frame (x forward, y left, z up); voxel (i, j, k) spans
``origin + (i, j, k) * size`` to ``origin + (i + 1, j + 1, k + 1) * size``. Label grids hold ids with 0 = empty and
255 = ignore; both are drawn as empty. A :class:`Camera` maps world (LiDAR) points to pixels with ``T`` (4, 4,
world -> camera: x right, y down, z forward) and ``K`` (3, 3); pixel centres lie at integer coordinates, as in
MonoScene's ``vox2pix`` (pixel = round(K p / z)).

Rendering: every face whose neighbour is empty (or outside the grid) and that faces the camera is projected as a
quad; the quads are expanded to the pixel centres of their bounding boxes in one batch, kept where all four edge
functions agree, and resolved with a z-buffer keyed by the exact per-pixel depth of the face plane. No Python loop
runs over voxels, faces or pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

EMPTY, IGNORE = 0, 255
# outward normals of the 6 face directions: +x, -x, +y, -y, +z, -z
FACE_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.int64)
DEFAULT_LIGHT = (-0.45, 0.35, 0.82)  # from behind the ego car, a little to the left, high: every face shade differs
_DEPTH_UNIT = 1e-4  # m per z-buffer depth step
_FACE_BITS = 32


def _face_corner_offsets() -> np.ndarray:
    """(6, 4, 3) corner offsets (voxel units from the voxel's min corner) of each face, in cyclic order."""
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
    out = np.zeros((6, 4, 3), dtype=np.int64)
    for d, normal in enumerate(FACE_NORMALS):  # 6 directions, not voxels
        axis = int(np.flatnonzero(normal)[0])
        others = [a for a in range(3) if a != axis]
        out[d, :, axis] = 1 if normal[axis] > 0 else 0
        out[d][:, others] = square
    return out


FACE_CORNERS = _face_corner_offsets()


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: ``K`` (3, 3) intrinsics, ``T`` (4, 4) world -> camera, image ``width`` x ``height``."""

    K: np.ndarray
    T: np.ndarray
    width: int
    height: int

    @property
    def centre(self) -> np.ndarray:
        """Camera position in world coordinates (3,)."""
        R, t = self.T[:3, :3], self.T[:3, 3]
        return -R.T @ t

    def resized(self, scale: float) -> Camera:
        """The same view on an image ``scale`` times as large (pixel centres stay at integer coordinates)."""
        S = np.array([[scale, 0.0, 0.5 * scale - 0.5], [0.0, scale, 0.5 * scale - 0.5], [0.0, 0.0, 1.0]])
        return Camera(S @ self.K, self.T, max(1, round(self.width * scale)), max(1, round(self.height * scale)))

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> (pixel coordinates (N, 2) float, camera depth z (N,))."""
        cam = np.asarray(points, dtype=np.float64) @ self.T[:3, :3].T + self.T[:3, 3]  # (N, 3)
        p = cam @ self.K.T  # (N, 3)
        with np.errstate(divide="ignore", invalid="ignore"):
            return p[:, :2] / p[:, 2:3], cam[:, 2]


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """(4, 4) world -> camera transform of a camera at ``eye`` looking at ``target`` (x right, y down, z forward)."""
    eye_v, forward = np.asarray(eye, float), np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    up_v = np.asarray(up, float)
    if abs(forward @ up_v) > 0.999 * np.linalg.norm(up_v):  # looking straight along ``up``: x forward is image-up
        up_v = np.array([1.0, 0.0, 0.0])
    right = np.cross(forward, up_v)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    T = np.eye(4)
    T[:3, :3] = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    T[:3, 3] = -T[:3, :3] @ eye_v
    return T


def fit_camera(T: np.ndarray, points: np.ndarray, width: int, height: int | None = None,
               margin: float = 0.03) -> Camera:
    """A camera with pose ``T`` whose focal length and principal point frame ``points`` (N, 3), all in front of it.

    ``height`` None: chosen from the points' aspect ratio, so the view fills the image.
    """
    cam = np.asarray(points, float) @ T[:3, :3].T + T[:3, 3]  # (N, 3)
    if (cam[:, 2] <= 0).any():
        raise ValueError("fit_camera: some points lie behind the camera")
    xy = cam[:, :2] / cam[:, 2:3]  # (N, 2) normalised image coordinates
    lo, hi = xy.min(0), xy.max(0)
    span = np.maximum(hi - lo, 1e-9)
    usable_w = width * (1 - 2 * margin)
    if height is None:
        height = max(1, int(np.ceil(usable_w * span[1] / span[0] / (1 - 2 * margin))))
    f = min(usable_w / span[0], height * (1 - 2 * margin) / span[1])
    mid = (lo + hi) / 2
    K = np.array([[f, 0.0, (width - 1) / 2 - f * mid[0]], [0.0, f, (height - 1) / 2 - f * mid[1]], [0, 0, 1.0]])
    return Camera(K, np.asarray(T, float), int(width), int(height))


def grid_corners(grid: Sequence[int], voxel_size: float, origin: Sequence[float]) -> np.ndarray:
    """(8, 3) world corners of the grid's bounding box."""
    ext = np.asarray(grid, float) * voxel_size
    unit = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    return np.asarray(origin, float) + unit * ext


def orbit_camera(grid: Sequence[int], voxel_size: float, origin: Sequence[float], width: int,
                 azimuth_deg: float, elevation_deg: float, distance: float = 1.4, height: int | None = None) -> Camera:
    """A camera looking at the grid centre from behind the ego car, framing the whole grid.

    ``azimuth_deg`` turns the eye from straight behind (-x) towards the left (+y); ``elevation_deg`` 90 looks
    straight down (bird's-eye view, x forward = image up). ``distance`` is in units of the grid's diagonal.
    """
    corners = grid_corners(grid, voxel_size, origin)
    centre = corners.mean(0)
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    direction = np.array([-np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    eye = centre + distance * np.linalg.norm(corners[-1] - corners[0]) * direction
    return fit_camera(look_at(eye, centre), corners, width, height)


def exposed_faces(occupied: np.ndarray, viewpoint: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Faces of occupied voxels whose neighbour across the face is empty or outside the grid.

    ``viewpoint``: the camera position in continuous voxel coordinates ((p - origin) / size); if given, only faces
    whose outward normal points towards it are kept (back-face culling).
    Returns (voxel indices (F, 3) int64, face direction (F,) int64 indexing :data:`FACE_NORMALS`), grouped by
    direction.
    """
    occ = np.asarray(occupied, dtype=bool)
    flat_occ = occ.reshape(-1)
    flat = np.flatnonzero(flat_occ)  # (N,) occupied voxels only: every test below is O(N), not O(grid)
    coords = np.stack(np.unravel_index(flat, occ.shape))  # (3, N)
    strides = np.array([occ.shape[1] * occ.shape[2], occ.shape[2], 1])
    idx_parts, dir_parts = [], []
    for d, normal in enumerate(FACE_NORMALS):  # 6 directions
        axis = int(np.flatnonzero(normal)[0])
        step = int(normal[axis])
        c = coords[axis]
        nb = c + step
        inside = (nb >= 0) & (nb < occ.shape[axis])
        exposed = ~inside
        exposed[inside] = ~flat_occ[flat[inside] + step * strides[axis]]
        if viewpoint is not None:  # the face plane p = c + (step > 0) faces the viewer iff step * (v - p) > 0
            exposed &= step * (float(viewpoint[axis]) - (c + (step > 0))) > 0
        found = np.flatnonzero(exposed)
        idx_parts.append(coords[:, found].T)
        dir_parts.append(np.full(len(found), d, dtype=np.int64))
    return np.concatenate(idx_parts).astype(np.int64), np.concatenate(dir_parts)


def face_shades(light: Sequence[float] = DEFAULT_LIGHT, ambient: float = 0.45) -> np.ndarray:
    """(6,) Lambertian brightness ambient + (1 - ambient) max(0, n . l) of each face direction."""
    lv = np.asarray(light, float)
    lv = lv / np.linalg.norm(lv)
    return ambient + (1 - ambient) * np.clip(FACE_NORMALS @ lv, 0, None)


@dataclass
class VoxelRender:
    """One rendered view: ``rgb`` uint8 (H, W, 3), ``depth`` float32 (H, W) camera z (inf: background),
    ``voxel`` int64 (H, W) flat index of the voxel seen at each pixel (-1: background)."""

    rgb: np.ndarray
    depth: np.ndarray
    voxel: np.ndarray


def render_voxels(ids: np.ndarray, colours: np.ndarray, camera: Camera, voxel_size: float,
                  origin: Sequence[float], background: Sequence[int] = (255, 255, 255),
                  light: Sequence[float] = DEFAULT_LIGHT, ambient: float = 0.45, outline: float = 0.3,
                  near: float = 0.05, max_candidates: int = 4_000_000) -> VoxelRender:
    """Render the voxels of ``ids`` (X, Y, Z) whose id is neither 0 nor 255 as shaded cubes seen by ``camera``.

    ``colours`` (256, 3) RGB per id. ``outline`` darkens voxel borders where a voxel spans at least a few pixels
    (0 = off). Faces crossing the ``near`` plane (m) are dropped. Candidate pixels are processed in chunks of at
    most ``max_candidates`` to bound memory.
    """
    ids = np.asarray(ids)
    W, H = camera.width, camera.height
    origin_v = np.asarray(origin, float)
    occupied = (ids != EMPTY) & (ids != IGNORE)
    vox, dirs = exposed_faces(occupied, (camera.centre - origin_v) / voxel_size)

    # face corners in camera space, corner-major (4, F): each voxel's min corner plus a per-direction offset
    R, t = camera.T[:3, :3], camera.T[:3, 3]
    A = voxel_size * R
    base = np.einsum("fj,ij->if", vox.astype(float), A) + (R @ origin_v + t)[:, None]  # (3, F)
    offsets = np.einsum("ij,dcj->idc", A, FACE_CORNERS.astype(float))  # (3, 6, 4)
    X, Y, Zc = (base[i][None, :] + offsets[i].T[:, dirs] for i in range(3))  # each (4, F)
    front = (Zc > near).all(0)  # drop faces reaching behind the near plane
    vox, dirs, X, Y, Zc = vox[front], dirs[front], X[:, front], Y[:, front], Zc[:, front]
    K = camera.K
    x = (K[0, 0] * X + K[0, 1] * Y + K[0, 2] * Zc) / Zc  # (4, F) pixel coordinates of the corners
    y = (K[1, 0] * X + K[1, 1] * Y + K[1, 2] * Zc) / Zc

    # pixel-centre bounding boxes, clipped to the image
    u0 = np.clip(np.ceil(x.min(0)), 0, W).astype(np.int64)
    u1 = np.clip(np.floor(x.max(0)), -1, W - 1).astype(np.int64)
    v0 = np.clip(np.ceil(y.min(0)), 0, H).astype(np.int64)
    v1 = np.clip(np.floor(y.max(0)), -1, H - 1).astype(np.int64)
    nu, nv = u1 - u0 + 1, v1 - v0 + 1
    nxt = [1, 2, 3, 0]
    ex, ey = x[nxt] - x, y[nxt] - y  # (4, F) edge vectors
    area2 = (x * y[nxt] - x[nxt] * y).sum(0)  # twice the signed area
    keep = (nu > 0) & (nv > 0) & (np.abs(area2) > 1e-9)
    vox, dirs, u0, v0, nu, nv, area2 = vox[keep], dirs[keep], u0[keep], v0[keep], nu[keep], nv[keep], area2[keep]
    x, y, ex, ey, X, Y, Zc = (a[:, keep] for a in (x, y, ex, ey, X, Y, Zc))

    # edge functions E_k(du, dv) = a_k du + b_k dv + c_k as signed pixel distances (>= 0 inside)
    scale = np.sign(area2) / np.maximum(np.hypot(ex, ey), 1e-12)  # (4, F)
    ea, eb = -ey * scale, ex * scale
    ec = (ex * (v0 - y) - ey * (u0 - x)) * scale
    # inverse depth on the face plane is affine in the pixel: 1/z = n_c . K^-1 [u, v, 1] / (n_c . corner)
    n_cam = FACE_NORMALS.astype(float) @ R.T  # (6, 3) face normals in camera space
    g_tab = n_cam @ np.linalg.inv(K)  # (6, 3)
    nc = n_cam[dirs]  # (F, 3)
    plane_d = nc[:, 0] * X[0] + nc[:, 1] * Y[0] + nc[:, 2] * Zc[0]
    g = g_tab[dirs] / plane_d[:, None]  # (F, 3): coefficients of u, v, 1
    wa, wb, wc = g[:, 0], g[:, 1], g[:, 2] + g[:, 0] * u0 + g[:, 1] * v0
    coef = [c.astype(np.float32) for c in (*ea, *eb, *ec, wa, wb, wc)]

    zbuf = np.full(H * W, np.iinfo(np.int64).max, dtype=np.int64)
    counts = nu * nv
    ends = np.cumsum(counts)
    bounds = np.searchsorted(ends, np.arange(max_candidates, ends[-1] if len(ends) else 0, max_candidates))
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(counts)]):  # chunks of faces, not single faces
        if hi > lo:
            _rasterise_chunk(np.arange(lo, hi), counts, nu, u0, v0, coef, W, zbuf)

    hit = zbuf != np.iinfo(np.int64).max
    face = (zbuf[hit] & ((1 << _FACE_BITS) - 1)).astype(np.int64)
    depth = np.full(H * W, np.inf, dtype=np.float32)
    depth[hit] = (zbuf[hit] >> _FACE_BITS) * _DEPTH_UNIT
    voxel_map = np.full(H * W, -1, dtype=np.int64)
    flat_vox = np.ravel_multi_index(tuple(vox.T), ids.shape)
    voxel_map[hit] = flat_vox[face]

    shade = face_shades(light, ambient)
    face_rgb = colours[ids[tuple(vox.T)]].astype(np.float32) * shade[dirs][:, None].astype(np.float32)  # (F, 3)
    rgb = np.empty((H * W, 3), dtype=np.float32)
    rgb[:] = np.asarray(background, np.float32)
    rgb[hit] = face_rgb[face]
    rgb = rgb.reshape(H, W, 3)
    depth, voxel_map = depth.reshape(H, W), voxel_map.reshape(H, W)
    if outline > 0:
        _darken_borders(rgb, depth, voxel_map, camera.K[0, 0] * voxel_size, outline)
    return VoxelRender(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), depth, voxel_map)


def _rasterise_chunk(faces: np.ndarray, counts: np.ndarray, nu: np.ndarray, u0: np.ndarray, v0: np.ndarray,
                     coef: list[np.ndarray], width: int, zbuf: np.ndarray) -> None:
    """Expand ``faces`` to the pixel centres of their boxes, keep those inside, and min-reduce into ``zbuf``."""
    c = counts[faces]
    f = np.repeat(faces.astype(np.int32), c)  # (M,) face of each candidate pixel
    start = np.cumsum(c) - c
    local = np.arange(int(c.sum()), dtype=np.int64) - np.repeat(start, c)
    nuf = nu[f]
    dv = local // nuf
    du = local - dv * nuf
    duf, dvf = du.astype(np.float32), dv.astype(np.float32)
    inside = np.ones(len(f), dtype=bool)
    for k in range(4):  # the 4 edges of a quad
        inside &= coef[k][f] * duf + coef[4 + k][f] * dvf + coef[8 + k][f] >= -1e-3
    f, du, dv, duf, dvf = f[inside], du[inside], dv[inside], duf[inside], dvf[inside]
    inv_z = coef[12][f] * duf + coef[13][f] * dvf + coef[14][f]
    depth_q = np.round(1.0 / (np.maximum(inv_z, 1e-9) * _DEPTH_UNIT)).astype(np.int64)
    key = (np.minimum(depth_q, (1 << 30) - 1) << _FACE_BITS) | f.astype(np.int64)
    pix = (v0[f] + dv) * width + (u0[f] + du)
    np.minimum.at(zbuf, pix, key)


def _darken_borders(rgb: np.ndarray, depth: np.ndarray, voxel_map: np.ndarray, focal_size: float,
                    strength: float) -> None:
    """Darken pixels where the voxel changes to the right or below: fully where a voxel spans >= 9 pixels, fading
    to nothing at 3 pixels (distant voxels would otherwise turn into outline only)."""
    border = np.zeros(voxel_map.shape, dtype=bool)
    border[:, :-1] |= voxel_map[:, :-1] != voxel_map[:, 1:]
    border[:-1, :] |= voxel_map[:-1, :] != voxel_map[1:, :]
    border &= voxel_map >= 0
    with np.errstate(divide="ignore"):
        span_px = focal_size / depth[border]  # apparent voxel size in pixels
    factor = 1.0 - strength * np.clip((span_px - 3.0) / 6.0, 0.0, 1.0)
    rgb[border] *= factor[:, None].astype(np.float32)
