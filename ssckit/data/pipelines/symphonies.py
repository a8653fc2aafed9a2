"""Symphonies / MonoScene-style samples (symphonies.md §11).

Per frame: image -> (resize by ``image_scale / source_scale``, K scaled) -> top-left crop to the model input size ->
float -> ImageNet normalisation; stereo depth resized / cropped the same way; target at the model grid
(``<label_root>/<seq>/<frame>_1_<s>.npy`` if present, else downsampled from ``_1_1.npy``, else computed from
``voxels/*.label`` + ``.invalid``); K = P2[:3, :3] and Tr; voxel projections (``geometry.vox2pix``) and per-voxel
frustum tile ids, cached per sequence.

Training-time horizontal flip (probability ``flip_prob``, drawn from the sampler's per-(seed, epoch, frame) key):
- ``official`` (default, the released checkpoints): image mirrored at full width, then cropped; depth cropped, then
  mirrored; target mirrored in y; K, Tr, projections and frustum tiles unchanged (only approximately consistent).
- ``exact``: image and depth cropped, then mirrored together; target mirrored in y; K and Tr replaced by the
  mirrored camera (:func:`ssckit.data.transforms.mirror_camera`) and every projection recomputed from them.

Sample keys (numpy; ``collate_samples`` stacks them): ``img`` (3, H, W) float32, ``depth`` (H, W) float32 (if
``use_depth``), ``cam_K`` (3, 3) / ``cam_pose`` (4, 4) float32, ``voxel_origin`` (3,), ``target`` (X, Y, Z) uint8
(255 = ignore; train/val only), ``tile_ids`` (X, Y, Z) int64 (-1 = no tile), ``num_tiles`` int,
``projected_pix_<s>`` (N_s, 2) int64 (u, v), ``fov_mask_<s>`` (N_s,) bool, ``pix_z_<s>`` (N_s,) float32 for each s
in ``projection_scales`` (s relative to the model grid, voxels in x-major C order), ``flipped`` bool,
``sequence`` / ``frame_id`` str. (X, Y, Z) = (256, 256, 32) / ``grid_scale``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from ssckit.config_schema import BASE_VOXEL, DataConfig, image_size
from ssckit.data import transforms as T
from ssckit.data.datasets import FrameId, SSCDataset
from ssckit.data.geometry import FULL_GRID, VOXEL_ORIGIN, frustum_tile_ids, scaled_grid, vox2pix
from ssckit.data.preprocess import downsample_labels
from ssckit.errors import DataError

_CACHE_BYTES = 256 << 20  # per worker: projections + tile ids of a few (sequence, flip) cameras


def grid_target(reader: SSCDataset, frame: FrameId, grid_scale: int) -> np.ndarray:
    """uint8 (X, Y, Z) learning ids at 256x256x32 / ``grid_scale``, 255 = ignore: ``<label_root>/<seq>/<frame>_1_<s>
    .npy`` if present, else downsampled from ``_1_1.npy``, else computed from ``voxels/*.label`` + ``.invalid``
    (shared by the pipelines)."""
    s = grid_scale
    if reader.label_root is not None:
        if reader.target_path(frame, f"1_{s}").is_file():
            return reader.read_target(frame, f"1_{s}")
        if s != 1 and reader.target_path(frame, "1_1").is_file():
            return downsample_labels(reader.read_target(frame, "1_1"), s)
    full = reader.voxel_target(frame)
    return full if s == 1 else downsample_labels(full, s)


class SymphoniesPipeline:
    """Builds Symphonies samples from a dataset reader; ``stage`` is "train", "val" or "predict"."""

    input_size = staticmethod(image_size)  # (data_cfg, dataset_crop) -> model input (W, H)

    @staticmethod
    def roots(cfg: DataConfig, stage: str) -> dict[str, bool]:
        """Data roots read besides the data / label roots: key -> required."""
        return {"depth_root": True} if cfg.use_depth else {}

    def __init__(self, reader: SSCDataset, cfg: DataConfig, stage: str) -> None:
        self.reader = reader
        self.cfg = cfg
        self.stage = stage
        self.augment = stage == "train" and cfg.flip_prob > 0
        self.with_target = stage in ("train", "val")
        self.image_size = image_size(cfg, reader.image_size)  # (W, H)
        self.grid = scaled_grid(cfg.grid_scale, FULL_GRID)
        self._cache: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()
        self._cache_bytes = 0

    def __call__(self, frame: FrameId, aug_key: Sequence[int] | None = None) -> dict[str, Any]:
        cfg = self.cfg
        flip = bool(self.augment and aug_key is not None
                    and np.random.default_rng(list(aug_key)).random() < cfg.flip_prob)
        calib = self.reader.read_calib(frame.sequence)
        K, Tr = calib["K"], calib["Tr"]
        image = self.reader.read_image(frame)
        image_path = str(self.reader.image_path(frame))
        depth = None
        if cfg.use_depth:
            depth = self.reader.read_depth(frame)
            if depth.shape[:2] != image.shape[:2]:
                raise DataError(self.reader.depth_path(frame), f"depth map is {depth.shape[1]}x{depth.shape[0]} "
                                f"px but its image is {image.shape[1]}x{image.shape[0]}")
        factor = cfg.image_scale / cfg.source_scale
        if factor != 1.0:
            old = (image.shape[1], image.shape[0])
            new = T.scaled_size(*old, factor)
            K = T.resize_intrinsics(K, old, new)
            image = T.resize_image(image, new)
            depth = None if depth is None else T.resize_nearest(depth, new)
        official = flip and cfg.flip_mode == "official"
        exact = flip and not official
        if official:
            image = T.hflip(image)  # full width, then crop: the official order
        image = T.crop_top_left(image, self.image_size, image_path)
        if depth is not None:
            depth = T.crop_top_left(depth, self.image_size, str(self.reader.depth_path(frame)))
            if flip:
                depth = T.hflip(depth)
        if exact:
            image = T.hflip(image)
            K, Tr = T.mirror_camera(K, Tr, self.image_size[0])

        sample: dict[str, Any] = {
            "img": T.normalize_image(image),
            "cam_K": K.astype(np.float32),
            "cam_pose": Tr.astype(np.float32),
            "voxel_origin": np.asarray(VOXEL_ORIGIN, dtype=np.float32),
            "flipped": flip,
            "sequence": frame.sequence,
            "frame_id": frame.frame,
        }
        if depth is not None:
            sample["depth"] = np.ascontiguousarray(depth, dtype=np.float32)
        sample.update(self.geometry(frame.sequence, K, Tr, exact))
        if self.with_target:
            target = self.target(frame)
            sample["target"] = T.flip_grid_y(target) if flip else target
        return sample

    # --- targets ---------------------------------------------------------------------------------------------------

    def target(self, frame: FrameId) -> np.ndarray:
        """uint8 (X, Y, Z) learning ids at the model grid, 255 = ignore."""
        return grid_target(self.reader, frame, self.cfg.grid_scale)

    # --- geometry (cached per camera) ----------------------------------------------------------------------------

    def geometry(self, sequence: str, K: np.ndarray, Tr: np.ndarray, mirrored: bool) -> dict[str, Any]:
        key = (sequence, mirrored)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._compute_geometry(K, Tr)
            size = sum(a.nbytes for a in cached.values())
            while self._cache and self._cache_bytes + size > _CACHE_BYTES:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= sum(a.nbytes for a in old.values())
            self._cache[key] = cached
            self._cache_bytes += size
        else:
            self._cache.move_to_end(key)
        out: dict[str, Any] = {"num_tiles": self.cfg.frustum_size ** 2}
        for name, arr in cached.items():
            out[name] = arr.astype(np.int64) if name.startswith(("projected_pix", "tile_ids")) else arr.copy()
        return out

    def _compute_geometry(self, K: np.ndarray, Tr: np.ndarray) -> dict[str, np.ndarray]:
        cfg = self.cfg
        out: dict[str, np.ndarray] = {}
        for s in sorted(set(cfg.projection_scales) | {1}):
            scale = s * cfg.grid_scale
            pix, fov, z = vox2pix(Tr, K, self.image_size, scaled_grid(scale, FULL_GRID), BASE_VOXEL * scale)
            if s == 1:
                tiles, _ = frustum_tile_ids(pix, z, self.image_size, cfg.frustum_size)
                dtype = np.int16 if cfg.frustum_size ** 2 < 2 ** 15 else np.int64
                out["tile_ids"] = tiles.astype(dtype).reshape(self.grid)
            if s in cfg.projection_scales:
                out[f"projected_pix_{s}"] = pix.astype(np.int32)
                out[f"fov_mask_{s}"] = fov
                out[f"pix_z_{s}"] = z.astype(np.float32)
        return out
