"""Readers and writers of the SemanticKITTI / KITTI-360 file formats (datasets.md §1, §3, §4, §5).

Every reader checks size and content and raises :class:`ssckit.errors.DataError` naming the file and the problem,
instead of a bare numpy error. Voxel grids are [x, y, z] C-order (flat = x*Y*Z + y*Z + z); packed files hold 8
voxels per byte, most-significant bit first (``numpy.unpackbits`` default order).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ssckit.errors import DataError

GRID = (256, 256, 32)
NUM_VOXELS = GRID[0] * GRID[1] * GRID[2]  # 2,097,152
PACKED_BYTES = NUM_VOXELS // 8  # 262,144
CALIB_KEYS = ("P0", "P1", "P2", "P3", "Tr")

PathLike = str | os.PathLike


def _file_size(path: PathLike) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except OSError as e:
        raise DataError(path, f"cannot read ({e.strerror})") from None


def _read_raw(path: PathLike, dtype: np.dtype, expected_bytes: int | None, what: str) -> np.ndarray:
    size = _file_size(path)
    if expected_bytes is not None and size != expected_bytes:
        hint = "truncated" if size < expected_bytes else "too large"
        raise DataError(path, f"{what}: expected {expected_bytes:,} bytes, found {size:,} ({hint})")
    if size % np.dtype(dtype).itemsize:
        raise DataError(path, f"{what}: size {size:,} is not a multiple of {np.dtype(dtype).itemsize} bytes")
    return np.fromfile(path, dtype=dtype)


# --- voxel grids -------------------------------------------------------------------------------------------------

def unpack_bits(packed: np.ndarray, shape: tuple[int, int, int] = GRID) -> np.ndarray:
    """Packed uint8 (MSB first) -> bool grid of ``shape``."""
    return np.unpackbits(packed).reshape(shape).astype(bool)


def pack_bits(mask: np.ndarray) -> np.ndarray:
    """Bool grid -> packed uint8 (MSB first), the inverse of :func:`unpack_bits`."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1))


def read_voxel_mask(path: PathLike, shape: tuple[int, int, int] = GRID, allow_unpacked: bool = False) -> np.ndarray:
    """Read a ``.bin`` / ``.invalid`` / ``.occluded`` grid as bool (X, Y, Z).

    SemanticKITTI packs 8 voxels per byte. SSCBench-KITTI-360 stores ``.invalid`` with one byte per voxel; with
    ``allow_unpacked`` the layout is decided by the file size.
    """
    n = shape[0] * shape[1] * shape[2]
    size = _file_size(path)
    if allow_unpacked and size == n:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.max(initial=0) > 1:
            raise DataError(path, f"unpacked voxel mask holds value {int(raw.max())}; expected only 0/1")
        return raw.reshape(shape).astype(bool)
    if size != n // 8:
        sizes = f"{n // 8:,} (packed)" + (f" or {n:,} (unpacked)" if allow_unpacked else "")
        raise DataError(path, f"voxel mask: expected {sizes} bytes, found {size:,}")
    return unpack_bits(np.fromfile(path, dtype=np.uint8), shape)


def write_voxel_mask(path: PathLike, mask: np.ndarray, packed: bool = True) -> None:
    data = pack_bits(mask) if packed else np.asarray(mask, dtype=np.uint8).reshape(-1)
    atomic_write_bytes(path, data.tobytes())


def read_voxel_label(path: PathLike, shape: tuple[int, int, int] = GRID) -> np.ndarray:
    """Read a ``.label`` voxel file: uint16 raw ids, one per voxel, not packed -> (X, Y, Z)."""
    n = shape[0] * shape[1] * shape[2]
    return _read_raw(path, np.dtype("<u2"), 2 * n, "voxel labels (uint16)").reshape(shape)


def write_voxel_label(path: PathLike, labels: np.ndarray) -> None:
    atomic_write_bytes(path, np.asarray(labels).astype("<u2").reshape(-1).tobytes())


def read_target(path: PathLike, shape: tuple[int, int, int], num_classes: int | None = None) -> np.ndarray:
    """Read a preprocessed target ``NNNNNN_1_{1,2,8}.npy`` (float32 or uint8) as uint8 (0..N-1, 255 = ignore)."""
    arr = load_npy(path)
    if arr.shape != tuple(shape):
        raise DataError(path, f"target has shape {arr.shape}, expected {tuple(shape)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(path, "target contains NaN or inf")
        if (arr != np.round(arr)).any():
            raise DataError(path, "target holds non-integer values")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DataError(path, f"target values must lie in 0..255, found {arr.min()}..{arr.max()}")
    out = arr.astype(np.uint8)
    if num_classes is not None:
        bad = (out >= num_classes) & (out != 255)
        if bad.any():
            raise DataError(path, f"target holds class id {int(out[bad][0])}, but the dataset has {num_classes}")
    return out


# --- calibration, poses, times -------------------------------------------------------------------------------------

def read_calib(path: PathLike) -> dict[str, np.ndarray]:
    """Parse ``calib.txt``: P0..P3 as (3, 4) and Tr (velodyne -> rectified cam0) as a (4, 4) matrix.

    Only these five keys are read (12 numbers each); other lines (e.g. a 9-number ``R0_rect``) are ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read calibration ({e})") from None
    calib: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(lines, 1):
        key, sep, values = line.partition(":")
        key = key.strip()
        if key not in CALIB_KEYS:  # blank lines and other keys (R0_rect: 9 numbers, Tr_imu_velo, ...) are not used
            continue
        if not sep:
            raise DataError(path, f"line {lineno}: expected '{key}: 12 numbers', got {line[:40]!r}")
        try:
            nums = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError:
            raise DataError(path, f"line {lineno} ({key}): values are not numbers") from None
        if nums.size != 12:
            raise DataError(path, f"line {lineno} ({key}): expected 12 numbers, found {nums.size}")
        calib[key] = nums.reshape(3, 4)
    missing = [k for k in CALIB_KEYS if k not in calib]
    if missing:
        raise DataError(path, f"calibration lacks {', '.join(missing)}")
    tr = np.eye(4)
    tr[:3] = calib["Tr"]
    calib["Tr"] = tr
    return calib


def write_calib(path: PathLike, calib: dict[str, np.ndarray]) -> None:
    lines = [f"{k}: " + " ".join(f"{v:.12e}" for v in np.asarray(calib[k])[:3].reshape(-1)) for k in CALIB_KEYS]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_poses(path: PathLike) -> np.ndarray:
    """``poses.txt``: one row-major 3x4 pose per line -> (N, 4, 4) float64."""
    rows = _read_table(path, 12, "pose")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3] = rows.reshape(-1, 3, 4)
    return poses


def write_poses(path: PathLike, poses: np.ndarray) -> None:
    rows = np.asarray(poses)[:, :3].reshape(len(poses), 12)
    atomic_write_bytes(path, "".join(" ".join(f"{v:.9e}" for v in r) + "\n" for r in rows).encode())


def read_indexed_poses(path: PathLike, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """KITTI-360 pose tables, one ``index`` + row-major matrix per line: ``pose.txt`` (rows=3: 3x4 vehicle -> world)
    or ``cam0_to_world.txt`` (rows=4: 4x4). -> (frame indices int64 (N,), poses float64 (N, 4, 4))."""
    if rows not in (3, 4):
        raise ValueError(f"rows must be 3 (3x4 poses) or 4 (4x4 poses), got {rows}")
    table = _read_table(path, 1 + 4 * rows, "indexed pose")
    index = table[:, 0]
    if (index != np.round(index)).any() or (index < 0).any():
        raise DataError(path, "the first column (frame index) must hold non-negative integers")
    if (np.diff(index) <= 0).any():
        raise DataError(path, "frame indices must increase from line to line")
    poses = np.tile(np.eye(4), (len(table), 1, 1))
    poses[:, :rows] = table[:, 1:].reshape(-1, rows, 4)  # (N, rows, 4)
    return index.astype(np.int64), poses


def write_indexed_poses(path: PathLike, index: np.ndarray, poses: np.ndarray, rows: int) -> None:
    """Inverse of :func:`read_indexed_poses`: ``index`` then the top ``rows`` rows of each (4, 4) pose per line."""
    flat = np.asarray(poses)[:, :rows].reshape(len(poses), 4 * rows)  # (N, rows*4)
    text = "".join(f"{int(i)} " + " ".join(f"{v:.9e}" for v in r) + "\n" for i, r in zip(index, flat))
    atomic_write_bytes(path, text.encode())


def read_times(path: PathLike) -> np.ndarray:
    """``times.txt``: one timestamp (s) per line -> (N,) float64."""
    return _read_table(path, 1, "timestamp")[:, 0]


def write_times(path: PathLike, times: np.ndarray) -> None:
    atomic_write_bytes(path, "".join(f"{t:.6e}\n" for t in np.asarray(times)).encode())


def _read_table(path: PathLike, cols: int, what: str) -> np.ndarray:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read {what} table ({e})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise DataError(path, f"line {lineno}: {what} values are not numbers") from None
        if len(vals) != cols:
            raise DataError(path, f"line {lineno}: expected {cols} numbers per {what}, found {len(vals)}")
        rows.append(vals)
    return np.asarray(rows, dtype=np.float64).reshape(-1, cols)


# --- images, depth, LiDAR --------------------------------------------------------------------------------------------

def read_image(path: PathLike) -> np.ndarray:
    """8-bit RGB image -> uint8 (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    _file_size(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(path, f"unreadable or truncated image ({e})") from None


def write_image(path: PathLike, image: np.ndarray) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, path)


def read_depth(path: PathLike) -> np.ndarray:
    """Stereo depth map (metres) ``NNNNNN.npy`` -> float32 (H, W); NaN or negative values are an error."""
    depth = load_npy(path)
    if depth.ndim != 2:
        raise DataError(path, f"depth must be a 2-D (H, W) array, found shape {depth.shape}")
    if depth.dtype.kind != "f":
        raise DataError(path, f"depth must be floating point, found {depth.dtype}")
    if np.isnan(depth).any():
        raise DataError(path, f"depth contains {int(np.isnan(depth).sum())} NaN values")
    if (depth < 0).any():
        raise DataError(path, f"depth contains {int((depth < 0).sum())} negative values")
    return depth.astype(np.float32, copy=False)


def read_scan(path: PathLike) -> np.ndarray:
    """``velodyne/NNNNNN.bin``: float32 (x, y, z, remission) -> (N, 4)."""
    size = _file_size(path)
    if size % 16:
        raise DataError(path, f"LiDAR scan size {size:,} is not a multiple of 16 bytes (4 float32 per point)")
    return np.fromfile(path, dtype="<f4").reshape(-1, 4)


def write_scan(path: PathLike, points: np.ndarray) -> None:
    atomic_write_bytes(path, np.asarray(points, dtype="<f4").reshape(-1, 4).tobytes())


def read_point_labels(path: PathLike, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``labels/NNNNNN.label``: uint32 per point -> (semantic uint16 = low 16 bits, instance uint16 = high 16)."""
    raw = _read_raw(path, np.dtype("<u4"), None if num_points is None else 4 * num_points, "point labels (uint32)")
    return (raw & 0xFFFF).astype(np.uint16), (raw >> 16).astype(np.uint16)


def write_point_labels(path: PathLike, semantic: np.ndarray, instance: np.ndarray | None = None) -> None:
    sem = np.asarray(semantic, dtype=np.uint32)
    inst = np.zeros_like(sem) if instance is None else np.asarray(instance, dtype=np.uint32)
    atomic_write_bytes(path, ((inst << 16) | (sem & 0xFFFF)).astype("<u4").tobytes())


# --- small file helpers -------------------------------------------------------------------------------------------

def load_npy(path: PathLike) -> np.ndarray:
    """A ``.npy`` file holding one numeric (bool / integer / float) array; anything else is a DataError."""
    _file_size(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(path, f"not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):  # np.load opens an .npz archive saved under a .npy name as an NpzFile
        arr.close()
        raise DataError(path, f"expected a single .npy array, found an .npz archive ({type(arr).__name__})")
    if arr.dtype.kind not in "biuf":
        raise DataError(path, f"expected a numeric array, found dtype {arr.dtype}")
    return arr


def _tmp_path(path: PathLike) -> str:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=Path(path).suffix, dir=Path(path).parent)
    os.close(fd)
    return tmp


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + rename, so a crash never leaves a partial file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_npy(path: PathLike, array: np.ndarray) -> None:
    """Atomic ``numpy.save`` (resumable jobs can trust that an existing file is complete)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
