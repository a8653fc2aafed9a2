"""Voxel-grid / camera geometry (datasets.md §1.3, §3.3; symphonies.md §5, §9), in numpy and batched torch.

Conventions:
- Grid: LiDAR frame (x forward, y left, z up), origin (0, -25.6, -2) m, voxel 0.2 m x scale, shape (256, 256, 32) /
  scale. Voxels are enumerated ij-style: flat = (x * Y + y) * Z + z, the C order of the label grids.
- Projection (MonoScene ``vox2pix``): voxel centres -> camera by the 4x4 ``T_velo_2_cam`` (calib ``Tr``), then
  pixel = round(fx X/Z + cx), round(fy Y/Z + cy) as int64 with K = P2[:3, :3] (P2's 4th column is ignored);
  fov = 0 <= u < W and 0 <= v < H and Z > 0. Rounding is half-to-even (numpy and torch agree).
- Back-projection (Symphonies ``pix2vox``): p_cam = K^-1 [u d, v d, d], p = T^-1 p_cam,
  idx = (p - origin) / size - offset, z divided by ``downsample_z``; the official code then truncates toward zero.
- Local frustums (MonoScene FP loss): the image is cut into frustum_size x frustum_size tiles (8 x 8 = 64 in the
  configs); tile (tx, ty) spans u in [tx W / s, (tx+1) W / s), v likewise; its id is ty * s + tx.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch

VOXEL_ORIGIN: tuple[float, float, float] = (0.0, -25.6, -2.0)
BASE_VOXEL_SIZE = 0.2
FULL_GRID: tuple[int, int, int] = (256, 256, 32)
IMAGE_SIZE_SEMANTIC_KITTI: tuple[int, int] = (1220, 370)  # (W, H) top-left crop
IMAGE_SIZE_KITTI_360: tuple[int, int] = (1408, 376)

Rounding = Literal["trunc", "floor", "round"]
_PIX_LIMIT = 2**30  # projected pixels of voxels at/behind the camera plane are clipped to this (they are never in FOV)


# --- grids -----------------------------------------------------------------------------------------------------------

def scaled_grid(scale: int, full_grid: Sequence[int] = FULL_GRID) -> tuple[int, int, int]:
    """Grid shape at 1:``scale`` (e.g. 2 -> (128, 128, 16)); every axis must divide evenly."""
    if scale < 1 or any(n % scale for n in full_grid):
        raise ValueError(f"scale {scale} does not divide the grid {tuple(full_grid)}")
    return (full_grid[0] // scale, full_grid[1] // scale, full_grid[2] // scale)


def scaled_voxel_size(scale: int, base: float = BASE_VOXEL_SIZE) -> float:
    return base * scale


def voxel_indices(grid: Sequence[int]) -> np.ndarray:
    """(N, 3) int64 (i, j, k) of every voxel, ij meshgrid order = flat order of a C-order label grid."""
    xv, yv, zv = np.meshgrid(*(np.arange(n) for n in grid), indexing="ij")
    return np.stack([xv.reshape(-1), yv.reshape(-1), zv.reshape(-1)], axis=1)  # (N, 3)


def voxel_centres(grid: Sequence[int], voxel_size: float,
                  origin: Sequence[float] = VOXEL_ORIGIN) -> np.ndarray:
    """(N, 3) float64 voxel centres origin + (idx + 0.5) * size, flat order of the grid."""
    return np.asarray(origin, dtype=np.float64) + (voxel_indices(grid) + 0.5) * voxel_size


def voxel_centres_torch(grid: Sequence[int], voxel_size: float, origin: Sequence[float] = VOXEL_ORIGIN,
                        device: torch.device | str | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Torch twin of :func:`voxel_centres`: (N, 3) on ``device``."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in grid]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # (N, 3)
    return torch.as_tensor(origin, dtype=dtype, device=device) + (idx + 0.5) * voxel_size


def _affine(points: np.ndarray, M: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N, 3) -> (N, 3) = points @ M.T + t (einsum: a BLAS (N, 3) @ (3, 3) product is ~10x slower here)."""
    return np.einsum("nj,ij->ni", points, M) + t


# --- projection ------------------------------------------------------------------------------------------------------

def project_points(points: np.ndarray, T_velo_2_cam: np.ndarray, K: np.ndarray,
                   image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LiDAR points (N, 3) -> (pix (N, 2) int64 (u, v), fov (N,) bool, pix_z (N,) float64 camera depth)."""
    T = np.asarray(T_velo_2_cam, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    cam = _affine(np.asarray(points, dtype=np.float64)[:, :3], T[:3, :3], T[:3, 3])  # (N, 3)
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * cam[:, 0] / z + K[0, 2]
        v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    uv = np.stack([u, v], axis=1)  # (N, 2)
    uv = np.clip(np.nan_to_num(uv, nan=-1.0), -_PIX_LIMIT, _PIX_LIMIT)
    pix = np.round(uv).astype(np.int64)
    W, H = image_size
    fov = (pix[:, 0] >= 0) & (pix[:, 0] < W) & (pix[:, 1] >= 0) & (pix[:, 1] < H) & (z > 0)
    return pix, fov, z


def vox2pix(T_velo_2_cam: np.ndarray, K: np.ndarray, image_size: tuple[int, int], grid: Sequence[int],
            voxel_size: float, origin: Sequence[float] = VOXEL_ORIGIN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Project every voxel centre (MonoScene convention): (projected_pix (N, 2) int64 (u, v), fov_mask (N,) bool,
    pix_z (N,) float64). ``image_size`` is (W, H), e.g. (1220, 370) or (1408, 376)."""
    return project_points(voxel_centres(grid, voxel_size, origin), T_velo_2_cam, K, image_size)


def _batched(x: torch.Tensor | np.ndarray, ndim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(x, device=device).to(dtype)
    return t.unsqueeze(0) if t.ndim == ndim else t


def project_points_torch(points: torch.Tensor, T_velo_2_cam: torch.Tensor, K: torch.Tensor,
                         image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched :func:`project_points`: points (B, N, 3) or (N, 3) shared, T (B, 4, 4), K (B, 3, 3) ->
    pix (B, N, 2) int64, fov (B, N) bool, pix_z (B, N) in the points' dtype."""
    dtype, device = points.dtype, points.device
    T = _batched(T_velo_2_cam, 2, device, dtype)
    K = _batched(K, 2, device, dtype)
    cam = points[..., :3] @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]  # (B, N, 3)
    z = cam[..., 2]
    u = K[:, 0, 0, None] * cam[..., 0] / z + K[:, 0, 2, None]
    v = K[:, 1, 1, None] * cam[..., 1] / z + K[:, 1, 2, None]
    uv = torch.nan_to_num(torch.stack([u, v], dim=-1), nan=-1.0).clamp(-_PIX_LIMIT, _PIX_LIMIT)  # (B, N, 2)
    pix = torch.round(uv).long()
    W, H = image_size
    fov = (pix[..., 0] >= 0) & (pix[..., 0] < W) & (pix[..., 1] >= 0) & (pix[..., 1] < H) & (z > 0)
    return pix, fov, z


def vox2pix_torch(T_velo_2_cam: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int], grid: Sequence[int],
                  voxel_size: float, origin: Sequence[float] = VOXEL_ORIGIN,
                  dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched :func:`vox2pix` on T's device: T (B, 4, 4), K (B, 3, 3) -> (B, N, 2) int64, (B, N) bool, (B, N).
    Unbatched (4, 4) / (3, 3) inputs give B = 1. ``dtype`` float64 reproduces numpy's rounding exactly."""
    device = torch.as_tensor(T_velo_2_cam).device
    centres = voxel_centres_torch(grid, voxel_size, origin, device=device, dtype=dtype)
    return project_points_torch(centres, T_velo_2_cam, K, image_size)


# --- back-projection ---------------------------------------------------------------------------------------------------

def unproject_pixels(pix: np.ndarray, depth: np.ndarray, K: np.ndarray, T_velo_2_cam: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) (u, v) with camera depth Z (N,) -> LiDAR points (N, 3) float64: T^-1 K^-1 [u d, v d, d]."""
    d = np.asarray(depth, dtype=np.float64).reshape(-1)
    uv = np.asarray(pix, dtype=np.float64).reshape(-1, 2)
    uvd = np.stack([uv[:, 0] * d, uv[:, 1] * d, d], axis=1)  # (N, 3)
    cam = _affine(uvd, np.linalg.inv(np.asarray(K, dtype=np.float64)), np.zeros(3))
    T_inv = np.linalg.inv(np.asarray(T_velo_2_cam, dtype=np.float64))
    return _affine(cam, T_inv[:3, :3], T_inv[:3, 3])


def depth_to_points(depth: np.ndarray, K: np.ndarray, T_velo_2_cam: np.ndarray) -> np.ndarray:
    """Depth map (H, W) metres (camera Z) -> LiDAR-frame points (H*W, 3) float64, pixel row-major (v, then u)."""
    H, W = depth.shape
    v, u = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    pix = np.stack([u.reshape(-1), v.reshape(-1)], axis=1)  # (H*W, 2)
    return unproject_pixels(pix, depth, K, T_velo_2_cam)


def unproject_pixels_torch(pix: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                           T_velo_2_cam: torch.Tensor) -> torch.Tensor:
    """Batched :func:`unproject_pixels`: pix (B, N, 2) or (N, 2) shared, depth (B, N), K (B, 3, 3), T (B, 4, 4) ->
    (B, N, 3) in depth's dtype. Same order of operations as Symphonies (K.inverse() @ [u d, v d, d], then
    T.inverse() @ homogeneous)."""
    if depth.ndim == 1:
        depth = depth.unsqueeze(0)
    dtype, device = depth.dtype, depth.device
    K = _batched(K, 2, device, dtype)
    T = _batched(T_velo_2_cam, 2, device, dtype)
    uv = pix.to(device=device, dtype=dtype)
    uv = uv.unsqueeze(0) if uv.ndim == 2 else uv
    d = depth.unsqueeze(1)  # (B, 1, N)
    uvd = torch.cat([uv.transpose(1, 2) * d, d], dim=1)  # (B, 3, N)
    cam = torch.linalg.inv(K) @ uvd
    cam_h = torch.cat([cam, torch.ones_like(d)], dim=1)  # (B, 4, N)
    return (torch.linalg.inv(T) @ cam_h)[:, :3].transpose(1, 2)


def depth_to_points_torch(depth: torch.Tensor, K: torch.Tensor, T_velo_2_cam: torch.Tensor) -> torch.Tensor:
    """Batched :func:`depth_to_points`: depth (B, H, W) or (H, W), K (B, 3, 3), T (B, 4, 4) -> (B, H*W, 3)."""
    if depth.ndim == 2:
        depth = depth.unsqueeze(0)
    B, H, W = depth.shape
    v, u = torch.meshgrid(torch.arange(H, device=depth.device), torch.arange(W, device=depth.device), indexing="ij")
    pix = torch.stack([u.reshape(-1), v.reshape(-1)], dim=1)  # (H*W, 2)
    return unproject_pixels_torch(pix, depth.reshape(B, H * W), K, T_velo_2_cam)


def _round_np(x: np.ndarray, rounding: Rounding | None) -> np.ndarray:
    if rounding is None:
        return x
    op = {"trunc": np.trunc, "floor": np.floor, "round": np.round}[rounding]
    return op(x).astype(np.int64)


def points_to_grid_coords(points: np.ndarray, voxel_size: float, origin: Sequence[float] = VOXEL_ORIGIN,
                          offset: float = 0.5, downsample_z: int = 1,
                          rounding: Rounding | None = "trunc") -> np.ndarray:
    """(N, 3) points -> voxel coordinates (p - origin) / size - offset, z / downsample_z, then ``rounding``:
    "trunc" (toward zero, Symphonies' ``.long()``: with offset 0.5 this is floor except on (-1, 0), which maps to 0),
    "floor", "round", or None (floats). With offset 0 and "floor" this is the voxel that contains the point."""
    coords = (np.asarray(points, dtype=np.float64)[:, :3] - np.asarray(origin, dtype=np.float64)) / voxel_size - offset
    coords[:, 2] /= downsample_z
    return _round_np(coords, rounding)


def pix2vox(depth: np.ndarray, K: np.ndarray, T_velo_2_cam: np.ndarray, voxel_size: float,
            origin: Sequence[float] = VOXEL_ORIGIN, offset: float = 0.5, downsample_z: int = 1,
            rounding: Rounding | None = "trunc") -> np.ndarray:
    """Back-project every pixel of ``depth`` (H, W) into voxel coordinates (H*W, 3), row-major pixel order.
    Defaults = Symphonies (offset 0.5, truncation); indices may fall outside the grid (see :func:`inside_grid`)."""
    pts = depth_to_points(depth, K, T_velo_2_cam)
    return points_to_grid_coords(pts, voxel_size, origin, offset, downsample_z, rounding)


def pix2vox_torch(depth: torch.Tensor, K: torch.Tensor, T_velo_2_cam: torch.Tensor, voxel_size: float,
                  origin: Sequence[float] | torch.Tensor = VOXEL_ORIGIN, offset: float = 0.5, downsample_z: int = 1,
                  rounding: Rounding | None = "trunc") -> torch.Tensor:
    """Batched :func:`pix2vox`: depth (B, H, W) -> (B, H*W, 3) (int64, or depth's dtype when rounding is None).
    ``origin`` is (3,) or (B, 3)."""
    pts = depth_to_points_torch(depth, K, T_velo_2_cam)  # (B, HW, 3)
    org = torch.as_tensor(origin, dtype=pts.dtype, device=pts.device).reshape(-1, 1, 3)
    coords = (pts - org) / voxel_size - offset
    coords = torch.cat([coords[..., :2], coords[..., 2:] / downsample_z], dim=-1)  # (B, HW, 3)
    if rounding is None:
        return coords
    op = {"trunc": torch.trunc, "floor": torch.floor, "round": torch.round}[rounding]
    return op(coords).long()


def inside_grid(idx: np.ndarray | torch.Tensor, grid: Sequence[int]) -> np.ndarray | torch.Tensor:
    """(..., 3) integer indices -> (...) bool, True where 0 <= idx < grid on every axis."""
    ok = (idx[..., 0] >= 0) & (idx[..., 0] < grid[0])
    for axis in (1, 2):
        ok = ok & (idx[..., axis] >= 0) & (idx[..., axis] < grid[axis])
    return ok


# --- LiDAR voxelisation ----------------------------------------------------------------------------------------------

def points_to_voxel_indices(points: np.ndarray, grid: Sequence[int], voxel_size: float,
                            origin: Sequence[float] = VOXEL_ORIGIN) -> tuple[np.ndarray, np.ndarray]:
    """(N, >=3) points -> (idx (N, 3) int64 = floor((p - origin) / size), inside (N,) bool)."""
    idx = points_to_grid_coords(points, voxel_size, origin, offset=0.0, rounding="floor")
    return idx, inside_grid(idx, grid)


def points_to_occupancy(points: np.ndarray, grid: Sequence[int], voxel_size: float,
                        origin: Sequence[float] = VOXEL_ORIGIN) -> np.ndarray:
    """Voxelise a point cloud: bool grid, True where at least one point falls in the voxel."""
    idx, inside = points_to_voxel_indices(points, grid, voxel_size, origin)
    occ = np.zeros(tuple(grid), dtype=bool)
    idx = idx[inside]
    occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return occ


# --- local frustums (tile id per voxel) ------------------------------------------------------------------------------

def frustum_tile_ids(projected_pix: np.ndarray, pix_z: np.ndarray, image_size: tuple[int, int],
                     frustum_size: int, target: np.ndarray | None = None,
                     ignore_index: int = 255) -> tuple[np.ndarray, int]:
    """Per-voxel local-frustum id (N,) int64 in [0, frustum_size**2), -1 outside the image / behind the camera /
    where ``target`` (any shape with N elements) is ``ignore_index``; and the number of tiles.
    Replaces MonoScene's size*size dense masks: mask_t == (ids == t)."""
    W, H = image_size
    u, v = projected_pix[..., 0], projected_pix[..., 1]
    ok = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (pix_z > 0)
    if target is not None:
        ok &= np.asarray(target).reshape(ok.shape) != ignore_index
    tile = (v * frustum_size // H) * frustum_size + u * frustum_size // W  # exact: u >= t W / s <=> u s >= t W
    return np.where(ok, tile, -1).astype(np.int64), frustum_size * frustum_size


def frustum_tile_ids_torch(projected_pix: torch.Tensor, pix_z: torch.Tensor, image_size: tuple[int, int],
                           frustum_size: int, target: torch.Tensor | None = None,
                           ignore_index: int = 255) -> tuple[torch.Tensor, int]:
    """Torch twin of :func:`frustum_tile_ids` for (..., N, 2) pixels / (..., N) depths (any batch shape, device);
    ``target`` is reshaped to pix_z's shape, e.g. (B, X, Y, Z) -> (B, N)."""
    W, H = image_size
    u, v = projected_pix[..., 0].long(), projected_pix[..., 1].long()
    ok = (u >= 0) & (u < W) & (v >= 0) & (v < H) & (pix_z > 0)
    if target is not None:
        ok = ok & (target.reshape(ok.shape) != ignore_index)
    tile = torch.div(v * frustum_size, H, rounding_mode="floor") * frustum_size \
        + torch.div(u * frustum_size, W, rounding_mode="floor")
    return torch.where(ok, tile, torch.full_like(tile, -1)), frustum_size * frustum_size


def frustum_class_counts(tile_ids: np.ndarray, target: np.ndarray, num_tiles: int, num_classes: int) -> np.ndarray:
    """(num_tiles, num_classes) int64 voxel counts per tile and class (MonoScene's frustums_class_dists).
    Voxels with id -1 or a label >= num_classes (ignore) are skipped."""
    ids = np.asarray(tile_ids).reshape(-1)
    lab = np.asarray(target).reshape(-1).astype(np.int64)
    keep = (ids >= 0) & (lab < num_classes)
    flat = ids[keep] * num_classes + lab[keep]
    return np.bincount(flat, minlength=num_tiles * num_classes).reshape(num_tiles, num_classes)


def frustum_class_counts_torch(tile_ids: torch.Tensor, target: torch.Tensor, num_tiles: int,
                               num_classes: int) -> torch.Tensor:
    """Batched :func:`frustum_class_counts`: tile_ids (B, N), target (B, ...) -> (B, num_tiles, num_classes)."""
    B = tile_ids.shape[0]
    ids = tile_ids.reshape(B, -1)
    lab = target.reshape(B, -1).long()
    keep = (ids >= 0) & (lab < num_classes)
    batch = torch.arange(B, device=ids.device).unsqueeze(1).expand_as(ids)
    flat = (batch * num_tiles + ids) * num_classes + lab
    counts = torch.bincount(flat[keep], minlength=B * num_tiles * num_classes)
    return counts.reshape(B, num_tiles, num_classes)  # (B, T, C)
