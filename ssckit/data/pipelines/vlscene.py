"""VLScene stereo samples (vlscene.md §1, §4; official ``LoadMultiViewImageFromFiles_SemanticKitti``,
``CreateDepthFromLiDAR``).

Per frame, with (W, H) = ``config.image_size(data)`` (``data.crop_size``; official [1280, 384], KITTI-360 [1408, 384]):
- left and right image: resized by s = W / W0 to (round(W0 s), int(H0 s)) (bicubic), then the window
  x0 = (W' - W) // 2, y0 = H' - H of size W x H is kept, i.e. the bottom H rows (rows above the image are black,
  e.g. KITTI-360 376 px -> 8 black rows); ImageNet-normalised. No augmentation (the official recipe has none).
  Geometry as the official loader: pixel' = s * pixel - (x0, y0), stored as ``post_rot`` = diag(s, s, 1) and
  ``post_tran`` = (-x0, -y0, 0); the projections ``cam_P2`` / ``cam_P3`` stay the original ones, and ``cam_K`` is
  the intrinsics of the network input (post_rot applied to P2's K).
- ``fx_baseline`` = P2[0, 0] * baseline, baseline = P3[0, 3] / -P3[0, 0] - P2[0, 3] / -P2[0, 0] (original fx).
- ``target`` (X, Y, Z) uint8 at 256x256x32 / ``grid_scale`` (``<label_root>/<seq>/<frame>_1_<s>.npy``, else
  downsampled from ``_1_1``, else computed from ``voxels/*.label`` + ``.invalid``); train/val only.
- training only, when the first frame has a LiDAR scan (every frame then must): ``lidar_depth`` (H, W) float32 =
  the velodyne scan projected with P2 . Tr into the network input, nearest return per pixel at the rounded pixel,
  0 = none (no range filter); and, when the first frame also has lidarseg labels, the points of the left-image FOV
  (0 <= u <= W-1, 0 <= v <= H-1, depth > 0) padded to N = ``data.max_points``: ``points`` (N, 3) float32,
  ``point_labels`` (N,) int64 learning ids (0 = unlabelled/ignored, also the padding), ``point_mask`` (N,) bool.
  Frames with more FOV points keep a random subset (seeded by the frame).
- training only, when ``data.teacher_cache_root`` is set (or ``$SSCKIT_TEACHER_CACHE_ROOT``): ``vl_feat``
  (512, H/8, W/8) / ``vl_logits`` (21, H/8, W/8) float16 from the ``ssckit cache-teacher`` files
  ``<root>/<sequence>/<frame>.npz`` (a missing file is a DataError naming it).
The model's ``image_shape`` (H, W) is derived from the same (W, H) (``input_size``).
"""
from __future__ import annotations

import zlib
from typing import Any, Sequence

import numpy as np

from ssckit.config import DataConfig, image_size
from ssckit.data import transforms as T
from ssckit.data.datasets import FrameId, SSCDataset
from ssckit.data.labels import IGNORE
from ssckit.data.pipelines.symphonies import grid_target
from ssckit.errors import DataError, SsckitError


def resize_crop_geometry(width0: int, height0: int, width: int, height: int) -> tuple[float, int, int, int, int]:
    """(s, W', H', x0, y0) of VLScene's resize-to-width + bottom crop for a W0 x H0 image."""
    s = float(width) / float(width0)
    new_w, new_h = round(width0 * s), int(height0 * s)
    return s, new_w, new_h, int(max(0, new_w - width) / 2), new_h - height


def resize_crop(image: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (H0, W0, 3) -> (normalised (3, H, W) float32, post_rot (3, 3), post_tran (3,))."""
    from PIL import Image

    s, new_w, new_h, x0, y0 = resize_crop_geometry(image.shape[1], image.shape[0], width, height)
    pil = Image.fromarray(image)
    if (new_w, new_h) != (image.shape[1], image.shape[0]):
        pil = pil.resize((new_w, new_h), Image.BICUBIC)
    window = np.asarray(pil.crop((x0, y0, x0 + width, y0 + height)))  # black outside the resized image
    post_rot = np.diag([s, s, 1.0])
    post_tran = np.array([-x0, -y0, 0.0])
    return T.normalize_image(window), post_rot, post_tran


def project_to_input(points: np.ndarray, Tr: np.ndarray, P: np.ndarray, post_rot: np.ndarray,
                     post_tran: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LiDAR (N, 3) -> pixel (N, 2) of the network input and depth (N,) = third row of P . Tr . p."""
    homo = np.concatenate([points[:, :3], np.ones((len(points), 1))], axis=1)  # (N, 4)
    pix = homo @ (P @ Tr).T  # (N, 3)
    depth = pix[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pix[:, :2] / depth[:, None]
    return uv @ post_rot[:2, :2].T + post_tran[:2], depth


def lidar_depth_map(uv: np.ndarray, depth: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth map (H, W) float32 (nearest return at the rounded pixel, 0 = none) and the in-image mask (N,)."""
    valid = (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] <= width - 1) & (uv[:, 1] <= height - 1) & (depth > 0)
    cols = np.round(uv[valid, 0]).astype(np.int64)
    rows = np.round(uv[valid, 1]).astype(np.int64)
    flat = np.full(height * width, np.inf)
    np.minimum.at(flat, rows * width + cols, depth[valid])
    flat[np.isinf(flat)] = 0.0
    return flat.reshape(height, width).astype(np.float32), valid


class VLScenePipeline:
    """Builds VLScene samples from a dataset reader; ``stage`` is "train", "val" or "predict"."""

    input_size = staticmethod(image_size)  # (data_cfg, dataset_crop) -> model input (W, H)

    @staticmethod
    def roots(cfg: DataConfig, stage: str) -> dict[str, bool]:
        """Data roots read besides the data / label roots: key -> required (the teacher cache: when set)."""
        return {"teacher_cache_root": False} if stage == "train" else {}

    def __init__(self, reader: SSCDataset, cfg: DataConfig, stage: str) -> None:
        if stage == "train" and cfg.flip_prob > 0:
            raise SsckitError("the vlscene pipeline has no augmentation (official recipe); set data.flip_prob=0")
        self.reader = reader
        self.cfg = cfg
        self.stage = stage
        self.max_points = cfg.max_points  # KITTI: ~20k points in the left FOV of the 384-row crop
        self.with_target = stage in ("train", "val")
        self.size = image_size(cfg, reader.image_size)  # (W, H)
        self.cameras = tuple(getattr(reader, "CAMERAS", (2, 3)))[:2]
        first = reader.frames[0] if reader.frames else None
        self.with_lidar = stage == "train" and first is not None and self._exists(reader.scan_path, first)
        self.with_points = self.with_lidar and self._exists(reader.point_label_path, first)
        self.teacher_root = cfg.teacher_cache_root if stage == "train" else None

    @staticmethod
    def _exists(path_of: Any, frame: FrameId) -> bool:
        try:
            return path_of(frame).is_file()
        except SsckitError:  # the dataset has no such files (e.g. KITTI-360 scans)
            return False

    def __call__(self, frame: FrameId, aug_key: Sequence[int] | None = None) -> dict[str, Any]:
        w, h = self.size
        calib = self.reader.read_calib(frame.sequence)
        P2, P3, Tr = calib["P2"], calib["P3"], calib["Tr"]
        img, post_rot, post_tran = resize_crop(self.reader.read_image(frame, self.cameras[0]), w, h)
        img_right, post_rot_r, post_tran_r = resize_crop(self.reader.read_image(frame, self.cameras[1]), w, h)
        if not (np.allclose(post_rot, post_rot_r) and np.allclose(post_tran, post_tran_r)):
            raise DataError(self.reader.image_path(frame, self.cameras[1]), "right image size differs from the left")
        K = post_rot[:2, :2] @ P2[:2, :3]
        K[:, 2] += post_tran[:2]
        baseline = P3[0, 3] / -P3[0, 0] - P2[0, 3] / -P2[0, 0]
        sample: dict[str, Any] = {
            "img": img, "img_right": img_right,
            "cam_P2": P2.astype(np.float32), "cam_P3": P3.astype(np.float32), "cam_pose": Tr.astype(np.float32),
            "cam_K": np.vstack([K, [0.0, 0.0, 1.0]]).astype(np.float32),
            "post_rot": post_rot.astype(np.float32), "post_tran": post_tran.astype(np.float32),
            "fx_baseline": np.float32(P2[0, 0] * baseline),
            "sequence": frame.sequence, "frame_id": frame.frame,
        }
        if self.with_target:
            sample["target"] = self.target(frame)
        if self.with_lidar:
            sample.update(self.lidar(frame, P2, Tr, post_rot, post_tran))
        if self.teacher_root:
            sample.update(self.teacher_outputs(frame))
        return sample

    def target(self, frame: FrameId) -> np.ndarray:
        """uint8 (X, Y, Z) learning ids at 256x256x32 / grid_scale, 255 = ignore."""
        return grid_target(self.reader, frame, self.cfg.grid_scale)

    def lidar(self, frame: FrameId, P2: np.ndarray, Tr: np.ndarray, post_rot: np.ndarray,
              post_tran: np.ndarray) -> dict[str, np.ndarray]:
        w, h = self.size
        scan = self.reader.read_scan(frame)
        uv, depth = project_to_input(scan[:, :3].astype(np.float64), Tr, P2, post_rot, post_tran)
        depth_map, fov = lidar_depth_map(uv, depth, w, h)
        out: dict[str, np.ndarray] = {"lidar_depth": depth_map}
        if not self.with_points:
            return out
        semantic, _ = self.reader.read_point_labels(frame, len(scan))
        lut = self.reader.labels.lut.astype(np.int64)
        lut[lut == IGNORE] = 0  # point supervision: unlabelled / outlier / unknown ids are ignored as 0
        raw = semantic.astype(np.int64)
        labels = np.where(raw < len(lut), lut[np.minimum(raw, len(lut) - 1)], 0)
        idx = np.flatnonzero(fov)
        if len(idx) > self.max_points:
            rng = np.random.default_rng(zlib.crc32(f"{frame.sequence}/{frame.frame}".encode()))
            idx = np.sort(rng.choice(idx, self.max_points, replace=False))
        n = len(idx)
        points = np.zeros((self.max_points, 3), np.float32)
        point_labels = np.zeros(self.max_points, np.int64)
        points[:n], point_labels[:n] = scan[idx, :3], labels[idx]
        out.update(points=points, point_labels=point_labels, point_mask=np.arange(self.max_points) < n)
        return out

    def teacher_outputs(self, frame: FrameId) -> dict[str, np.ndarray]:
        from ssckit.models.teachers import NUM_PROMPTS, VL_FEATURE_DIM, cache_path, read_cache_entry

        w, h = self.size
        fh, fw = h // 8, w // 8
        feats, logits = read_cache_entry(cache_path(self.teacher_root, frame), (VL_FEATURE_DIM, fh, fw),
                                         (NUM_PROMPTS, fh, fw))
        return {"vl_feat": feats, "vl_logits": logits}
