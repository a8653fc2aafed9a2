"""Write synthetic sequences in the exact on-disk layout of SemanticKITTI or SSCBench-KITTI-360 (datasets.md §1, §4).

SemanticKITTI: ``OUT/sequences/XX/{calib,poses,times}.txt``, ``image_2/``, ``image_3/``, ``velodyne/``, ``labels/``,
``voxels/NNNNNN.{bin,label,invalid,occluded}``; depth ``OUT/depth/sequences/XX/NNNNNN.npy``. Test sequences 11-21
get, like the real data, no ground truth: ``voxels/*.bin`` only and no point ``labels/``.
KITTI-360: ``OUT/data_2d_raw/2013_05_28_drive_00NN_sync/{image_00,image_01}/data_rect/``, ``voxels/NNNNNN.{bin,label,
invalid}`` (``.invalid`` unpacked, one byte per voxel), ``pose.txt`` (index + 3x4 vehicle -> world; the synthetic
vehicle frame is the velodyne frame) and ``cam0_to_world.txt`` (index + 4x4), keyed by frame index, world = cam0 of
frame 0; depth ``OUT/depth/<drive>/NNNNNN.npy``.
Poses/times cover every frame index; images, scans and voxels exist for every 5th index (the SSC frames).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ssckit.data import io
from ssckit.data.datasets.kitti_360 import CAM0_TO_VELO, CX as K360_CX, CY as K360_CY, FX as K360_FX
from ssckit.data.synth.raycast import camera_grid, cast
from ssckit.data.synth.render import CAMERA_RANGE, RangeView, Scan, lidar_scan, panorama, shade, stereo_depth
from ssckit.data.synth.voxelize import occupancy, rasterize, visibility
from ssckit.data.synth.world import World, _rng, build_world
from ssckit.errors import SsckitError

FRAME_STEP = 5  # SSC frames are every 5th index
WINDOW = (-5, 0, 5, 10, 15, 20)  # frame offsets whose lines of sight decide .invalid
GRID = io.GRID
# SemanticKITTI per-sequence intrinsics (fx = fy, cx, cy) and image sizes (W, H), datasets.md §1.6
_SK_CAMERAS = {
    "a": ((718.856, 607.1928, 185.2157), (1241, 376)),  # 00-02, 13-21
    "b": ((721.5377, 609.5593, 172.854), (1242, 375)),  # 03
    "c": ((707.0912, 601.8873, 183.1104), (1226, 370)),  # 04-12
}
SK_BASELINE, SK_CAM2_OFFSET = 0.54, 0.06  # m: cam2 -> cam3; cam0 -> cam2 (cam2 sits left of cam0)
K360_BASELINE, K360_SIZE = 0.6, (1408, 376)


@dataclass(frozen=True)
class CameraRig:
    """Rectified stereo rig: image size, P0..P3 (3, 4) and Tr (4, 4) velodyne -> cam0; left = P2, right = P3."""

    width: int
    height: int
    P: dict[str, np.ndarray]
    Tr: np.ndarray
    baseline: float

    @property
    def K(self) -> np.ndarray:
        return self.P["P2"][:, :3]

    def centre(self, key: str) -> np.ndarray:
        """Camera centre in cam0 coordinates: P = K [I | t]  ->  C = -t = -K^-1 P[:, 3]."""
        return -np.linalg.solve(self.P[key][:, :3], self.P[key][:, 3])


def _projection(K: np.ndarray, tx: float) -> np.ndarray:
    """K [I | (tx, 0, 0)]: a rectified camera whose centre is at x = -tx in cam0 coordinates."""
    P = np.zeros((3, 4))
    P[:, :3] = K
    P[0, 3] = K[0, 0] * tx
    return P


def _scaled_k(fx: float, cx: float, cy: float, scale: float) -> np.ndarray:
    return np.array([[fx * scale, 0.0, (cx + 0.5) * scale - 0.5], [0.0, fx * scale, (cy + 0.5) * scale - 0.5],
                     [0.0, 0.0, 1.0]])


def semantic_kitti_rig(seq: str, scale: float, rng: np.random.Generator) -> CameraRig:
    n = int(seq)
    (fx, cx, cy), (w, h) = _SK_CAMERAS["b" if n == 3 else "c" if 4 <= n <= 12 else "a"]
    K = _scaled_k(fx, cx, cy, scale)
    P = {"P0": _projection(K, 0.0), "P1": _projection(K, -SK_BASELINE),
         "P2": _projection(K, SK_CAM2_OFFSET), "P3": _projection(K, SK_CAM2_OFFSET - SK_BASELINE)}
    # velodyne (x fwd, y left, z up) -> camera (x right, y down, z fwd), mounted 0.08 m above, 0.27 m behind cam0,
    # with a small per-sequence misalignment like a real extrinsic calibration
    a, b, c = rng.uniform(-0.006, 0.006, size=3)
    jitter = np.array([[1, -c, b], [c, 1, -a], [-b, a, 1]])
    u, _, vt = np.linalg.svd(jitter)
    Tr = np.eye(4)
    Tr[:3, :3] = (u @ vt) @ np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    Tr[:3, 3] = (0.0, -0.08, -0.27)
    return CameraRig(int(round(w * scale)), int(round(h * scale)), P, Tr, SK_BASELINE)


def kitti360_rig(scale: float) -> CameraRig:
    K = _scaled_k(K360_FX, K360_CX, K360_CY, scale)
    P = {"P0": _projection(K, 0.0), "P1": _projection(K, -K360_BASELINE), "P2": _projection(K, 0.0),
         "P3": _projection(K, -K360_BASELINE)}
    w, h = K360_SIZE
    return CameraRig(int(round(w * scale)), int(round(h * scale)), P, np.linalg.inv(CAM0_TO_VELO), K360_BASELINE)


class Layout(ABC):
    """Where one dataset keeps each file, and how its ``.invalid`` is made: ``sight = "panorama"`` marks voxels in
    line of sight of no window pose (SemanticKITTI: open space above the scene counts as seen), ``"lidar"`` only
    what the LiDAR beams reached (SSCBench-KITTI-360: most of the volume is invalid)."""

    name = ""
    sight = "panorama"
    packed_invalid = True
    voxel_exts: tuple[str, ...] = ()

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @abstractmethod
    def sequence(self, seq: str) -> str:
        """Subclass hook."""

    @abstractmethod
    def seq_dir(self, seq: str) -> Path:
        """Subclass hook."""

    @abstractmethod
    def image_path(self, seq: str, frame: str, right: bool) -> Path:
        """Subclass hook."""

    @abstractmethod
    def depth_path(self, seq: str, frame: str) -> Path:
        """Subclass hook."""

    def voxel_path(self, seq: str, frame: str, ext: str) -> Path:
        return self.seq_dir(seq) / "voxels" / f"{frame}.{ext}"

    @abstractmethod
    def rig(self, seq: str, scale: float, rng: np.random.Generator) -> CameraRig:
        """Subclass hook."""

    @abstractmethod
    def write_meta(self, seq: str, rig: CameraRig, cam_poses: np.ndarray, times: np.ndarray, scale: float) -> None:
        """Subclass hook."""

    def write_scan(self, seq: str, frame: str, scan: Scan) -> None:
        """Per-frame LiDAR files (only SemanticKITTI ships them)."""

    def labelled(self, seq: str) -> bool:
        """Whether the sequence ships ground truth (.label / .invalid / .occluded, point labels)."""
        return True


class SemanticKittiLayout(Layout):
    name = "semantic_kitti"
    voxel_exts = ("bin", "label", "invalid", "occluded")

    def sequence(self, seq: str) -> str:
        if not seq.isdigit() or not 0 <= int(seq) <= 21:
            raise SsckitError(f"semantic_kitti sequences are 00..21, got {seq!r}")
        return f"{int(seq):02d}"

    def seq_dir(self, seq: str) -> Path:
        return self.root / "sequences" / seq

    def image_path(self, seq: str, frame: str, right: bool) -> Path:
        return self.seq_dir(seq) / ("image_3" if right else "image_2") / f"{frame}.png"

    def depth_path(self, seq: str, frame: str) -> Path:
        return self.root / "depth" / "sequences" / seq / f"{frame}.npy"

    def rig(self, seq: str, scale: float, rng: np.random.Generator) -> CameraRig:
        return semantic_kitti_rig(seq, scale, rng)

    def write_meta(self, seq: str, rig: CameraRig, cam_poses: np.ndarray, times: np.ndarray, scale: float) -> None:
        d = self.seq_dir(seq)
        io.write_calib(d / "calib.txt", {**rig.P, "Tr": rig.Tr})
        io.write_poses(d / "poses.txt", cam_poses)
        io.write_times(d / "times.txt", times)

    def write_scan(self, seq: str, frame: str, scan: Scan) -> None:
        io.write_scan(self.seq_dir(seq) / "velodyne" / f"{frame}.bin", scan.points)
        if self.labelled(seq):
            io.write_point_labels(self.seq_dir(seq) / "labels" / f"{frame}.label", scan.raw, scan.instance)

    def labelled(self, seq: str) -> bool:
        return not 11 <= int(seq) <= 21  # the test sequences ship only voxels/*.bin (datasets.md §1.1)


class Kitti360Layout(Layout):
    name = "kitti_360"
    sight = "lidar"
    packed_invalid = False
    voxel_exts = ("bin", "label", "invalid")
    DRIVES = (0, 2, 3, 4, 5, 6, 7, 9, 10)

    def sequence(self, seq: str) -> str:
        s = seq.strip()
        num = int(s) if s.isdigit() else int(s[17:21]) if s.startswith("2013_05_28_drive_") and s[17:21].isdigit() \
            else -1
        if num not in self.DRIVES:
            raise SsckitError(f"kitti_360 drives are {', '.join(f'{d:04d}' for d in self.DRIVES)}, got {seq!r}")
        return f"2013_05_28_drive_{num:04d}_sync"

    def seq_dir(self, seq: str) -> Path:
        return self.root / "data_2d_raw" / seq

    def image_path(self, seq: str, frame: str, right: bool) -> Path:
        return self.seq_dir(seq) / ("image_01" if right else "image_00") / "data_rect" / f"{frame}.png"

    def depth_path(self, seq: str, frame: str) -> Path:
        return self.root / "depth" / seq / f"{frame}.npy"

    def rig(self, seq: str, scale: float, rng: np.random.Generator) -> CameraRig:
        return kitti360_rig(scale)

    def write_meta(self, seq: str, rig: CameraRig, cam_poses: np.ndarray, times: np.ndarray, scale: float) -> None:
        index = np.arange(len(cam_poses))
        io.write_indexed_poses(self.seq_dir(seq) / "cam0_to_world.txt", index, cam_poses, rows=4)
        io.write_indexed_poses(self.seq_dir(seq) / "pose.txt", index, cam_poses @ rig.Tr, rows=3)  # velodyne -> world
        if scale != 1.0:  # the readers' fixed calibration is full size: record the scaled one next to the images
            io.write_calib(self.seq_dir(seq) / "calib.txt", {**rig.P, "Tr": rig.Tr})


LAYOUTS: dict[str, type[Layout]] = {"semantic_kitti": SemanticKittiLayout, "kitti_360": Kitti360Layout}


def sequence_salt(dataset: str, seq: str) -> int:
    digits = "".join(ch for ch in seq if ch.isdigit())[-4:]
    return (1 if dataset == "kitti_360" else 0) * 10_000 + int(digits or 0)


def generate_sequence(layout: Layout, seq: str, frames: int, seed: int, image_scale: float,
                      progress: Callable[[], None] | None = None) -> list[str]:
    """Write one sequence with ``frames`` SSC frames; returns the frame ids written."""
    if frames < 1:
        raise SsckitError(f"--frames must be at least 1, got {frames}")
    salt = sequence_salt(layout.name, seq)
    last = FRAME_STEP * (frames - 1)
    world = build_world(seed, salt, last + max(WINDOW))
    traj = world.trajectory
    rig = layout.rig(seq, image_scale, _rng(seed, salt, 4))
    inv_tr = np.linalg.inv(rig.Tr)
    cam0 = np.stack([traj.pose(i) @ inv_tr for i in range(last + 1)])  # world <- cam0
    cam_poses = np.linalg.inv(cam0[0]) @ cam0  # cam0 of frame i in cam0 of frame 0
    layout.write_meta(seq, rig, cam_poses, traj.time(np.arange(last + 1)), image_scale)

    views: dict[int, RangeView] = {}  # lines of sight of the window poses, kept while the window slides
    scans: dict[int, Scan] = {}  # sweeps computed ahead as window views ("lidar" sight), reused as frames

    def scan_at(i: int) -> Scan:
        if i not in scans:
            scans[i] = lidar_scan(world, traj.pose(i), float(traj.time(i)), _rng(seed, salt, 3, i))
        return scans[i]

    def view_at(i: int) -> RangeView:
        if i not in views:
            pose, time = traj.pose(i), float(traj.time(i))
            views[i] = panorama(world, pose, time) if layout.sight == "panorama" else scan_at(i).view
        return views[i]

    labelled = layout.labelled(seq)  # unlabelled (test) frames need no lines of sight: no .invalid to decide
    written = []
    for i in range(0, last + 1, FRAME_STEP):
        frame = f"{i:06d}"
        for cache in (views, scans):
            for k in [k for k in cache if k < i + min(WINDOW)]:
                del cache[k]
        scan = scan_at(i)
        window = [view_at(i)] + [view_at(i + o) for o in WINDOW if o != 0] if labelled else []
        write_frame(layout, seq, frame, world, rig, i, scan, window, _rng(seed, salt, 5, i))
        written.append(frame)
        if progress is not None:
            progress()
    return written


def write_frame(layout: Layout, seq: str, frame: str, world: World, rig: CameraRig, index: int, scan: Scan,
                views: list[RangeView], rng: np.random.Generator) -> None:
    """All files of SSC frame ``index``; ``views[0]`` is the line-of-sight view from the frame's own pose (no views:
    an unlabelled test frame, written without ground truth)."""
    traj = world.trajectory
    time, pose = float(traj.time(index)), traj.pose(index)
    cam0 = pose @ np.linalg.inv(rig.Tr)  # world <- cam0
    for right, key in ((False, "P2"), (True, "P3")):
        T = cam0.copy()
        T[:3, 3] = cam0[:3, :3] @ rig.centre(key) + cam0[:3, 3]
        grid = camera_grid(rig.P[key][:, :3], rig.width, rig.height, T)
        hits = cast(world, grid, time, CAMERA_RANGE)
        io.write_image(layout.image_path(seq, frame, right), shade(world, hits, grid, time, rng))
        if not right:
            bf = rig.baseline * rig.K[0, 0]
            io.save_npy(layout.depth_path(seq, frame), stereo_depth(hits.t, bf, rng))
    layout.write_scan(seq, frame, scan)
    bin_mask = occupancy(scan.points, GRID)
    io.write_voxel_mask(layout.voxel_path(seq, frame, "bin"), bin_mask)
    if not views:
        return
    labels = rasterize(world, pose, time, GRID)
    invalid, occluded = visibility(pose, views, GRID, bin_mask)
    labels[invalid] = 0  # like the real data, only what some pose observed carries a label
    io.write_voxel_label(layout.voxel_path(seq, frame, "label"), labels)
    io.write_voxel_mask(layout.voxel_path(seq, frame, "invalid"), invalid, packed=layout.packed_invalid)
    if "occluded" in layout.voxel_exts:
        io.write_voxel_mask(layout.voxel_path(seq, frame, "occluded"), occluded)
