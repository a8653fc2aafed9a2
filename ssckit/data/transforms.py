"""Image / depth / camera / voxel transforms shared by the model pipelines (numpy in, numpy out).

Pixel convention: pixel (u, v) has its centre at integer coordinates (MonoScene ``vox2pix`` rounds to the
nearest pixel), so resizing by s maps u -> (u + 0.5) s - 0.5 and a horizontal mirror of width W maps u -> W - 1 - u.
Voxel grids are (X, Y, Z) with y from -25.6 m (index 0) to +25.6 m: flipping axis 1 mirrors y -> -y exactly.
"""
from __future__ import annotations

import numpy as np

from ssckit.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MIRROR_CAMERA = np.diag([-1.0, 1.0, 1.0, 1.0])  # camera frame x -> -x (image mirror)
MIRROR_LIDAR_Y = np.diag([1.0, -1.0, 1.0, 1.0])  # LiDAR frame y -> -y (grid axis 1 flip)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) -> (h, w, 3) at ``size`` = (w, h), bilinear (antialiased when shrinking)."""
    from PIL import Image

    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(size), Image.BILINEAR))


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, ...) -> (h, w, ...) at ``size`` = (w, h) by nearest neighbour (depth maps: no value mixing)."""
    h0, w0 = array.shape[:2]
    w, h = size
    if (w0, h0) == (w, h):
        return array
    rows = np.minimum(((np.arange(h) + 0.5) * h0 / h).astype(np.int64), h0 - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * w0 / w).astype(np.int64), w0 - 1)
    return array[rows[:, None], cols[None, :]]


def resize_intrinsics(K: np.ndarray, old_size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """K for an image resized from (W, H) to (w, h): f' = f s, c' = (c + 0.5) s - 0.5 per axis."""
    sx, sy = new_size[0] / old_size[0], new_size[1] / old_size[1]
    K = np.array(K, dtype=np.float64)
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 1] *= sx
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def crop_top_left(array: np.ndarray, size: tuple[int, int], what: str = "image") -> np.ndarray:
    """Keep rows [0, H) and columns [0, W) of an (H0, W0, ...) array; ``size`` = (W, H). No change to K."""
    w, h = size
    if array.shape[0] < h or array.shape[1] < w:
        raise DataError(what, f"is {array.shape[1]}x{array.shape[0]} px, smaller than the {w}x{h} crop "
                              "(set data.source_scale to the scale the images were written at, or data.crop_size)")
    return array[:h, :w]


def hflip(array: np.ndarray) -> np.ndarray:
    """Mirror an (H, W, ...) array left-right (contiguous copy)."""
    return np.ascontiguousarray(array[:, ::-1])


def flip_grid_y(grid: np.ndarray) -> np.ndarray:
    """Mirror an (X, Y, Z) voxel grid in y (LiDAR left <-> right)."""
    return np.ascontiguousarray(grid[:, ::-1])


def mirror_camera(K: np.ndarray, T_velo_2_cam: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera of the mirrored scene: the image mirrored over its width and the LiDAR frame mirrored in y.

    With q = T p a camera point, the mirrored image shows it at u' = W - 1 - u, which is the projection of
    R q = (-q_x, q_y, q_z) with c_x' = W - 1 - c_x. The point's mirrored-scene position is p' = M p, so
    T' = R T M (a proper rigid transform again, det = +1).
    """
    K2 = np.array(K, dtype=np.float64)
    K2[0, 2] = width - 1 - K2[0, 2]
    K2[0, 1] = -K2[0, 1]
    T2 = MIRROR_CAMERA @ np.asarray(T_velo_2_cam, dtype=np.float64) @ MIRROR_LIDAR_Y
    return K2, T2


def normalize_image(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): [0, 1] then ImageNet mean / std."""
    x = image.astype(np.float32) / 255.0
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, H, W)
