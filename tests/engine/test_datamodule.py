"""Data pipeline (crop, scale, normalise, official / exact flip), collate, sampler and the DataModule."""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ssckit.config import DataConfig
from ssckit.data import transforms as T
from ssckit.data.datasets import FrameId, SemanticKITTI
from ssckit.data.pipelines.symphonies import SymphoniesPipeline
from ssckit.engine.datamodule import EpochSampler, SSCDataModule, collate_samples
from ssckit.errors import DataError, SsckitError

from engine_helpers import CROP, IMAGE_SIZE, KITTI_TR


class FakeReader:
    """Just what the pipeline reads: column-coded image and depth, fixed calibration, a labelled grid."""

    image_size = (1220, 370)
    label_root = None

    def __init__(self, width: int = 155, height: int = 47) -> None:
        self.w, self.h = width, height
        self.K = np.array([[90.0, 0.0, 76.0], [0.0, 90.0, 23.0], [0.0, 0.0, 1.0]])

    def read_calib(self, seq):
        return {"K": self.K.copy(), "Tr": KITTI_TR.copy()}

    def read_image(self, f):
        img = np.zeros((self.h, self.w, 3), dtype=np.uint8)
        img[..., 0] = np.arange(self.w, dtype=np.uint8)[None, :]  # red = column index
        img[..., 1] = np.arange(self.h, dtype=np.uint8)[:, None]  # green = row index
        return img

    def image_path(self, f):
        return Path("img.png")

    def read_depth(self, f):
        return np.tile(np.arange(self.w, dtype=np.float32), (self.h, 1)) + 1.0  # depth = column + 1

    def depth_path(self, f):
        return Path("depth.npy")

    def voxel_target(self, f):
        t = np.zeros((256, 256, 32), dtype=np.uint8)
        t[:, :64] = 9  # road on the right (y < -12.8 m)
        return t


def _cfg(**kw) -> DataConfig:
    base = dict(crop_size=list(CROP), grid_scale=8, projection_scales=[1, 2], flip_prob=1.0)
    base.update(kw)
    return DataConfig(**base)


def _raw_image(sample) -> np.ndarray:
    """Undo normalisation -> uint8-valued (H, W, 3)."""
    x = sample["img"].transpose(1, 2, 0) * T.IMAGENET_STD + T.IMAGENET_MEAN
    return np.round(x * 255.0)


FRAME = FrameId("00", "000000")


def test_normalisation_crop_and_keys():
    s = SymphoniesPipeline(FakeReader(), _cfg(flip_prob=0.0), "train")(FRAME, (0, 0, 0))
    assert s["img"].shape == (3, 46, 152) and s["img"].dtype == np.float32
    assert s["img"][0, 0, 3] == pytest.approx((3 / 255 - 0.485) / 0.229, abs=1e-5)  # red = 3 at column 3
    assert s["img"][1, 10, 0] == pytest.approx((10 / 255 - 0.456) / 0.224, abs=1e-5)  # green = 10 at row 10
    assert s["depth"].shape == (46, 152) and s["depth"][0, 151] == 152.0
    assert s["target"].shape == (32, 32, 4) and s["target"].dtype == np.uint8
    assert (s["target"][:, :8] == 9).all() and (s["target"][:, 8:] == 0).all()
    assert s["tile_ids"].shape == (32, 32, 4) and s["tile_ids"].dtype == np.int64 and s["num_tiles"] == 64
    assert s["projected_pix_1"].shape == (32 * 32 * 4, 2) and s["projected_pix_2"].shape == (16 * 16 * 2, 2)
    assert s["fov_mask_2"].dtype == bool and s["pix_z_1"].dtype == np.float32
    np.testing.assert_array_equal(s["cam_K"], FakeReader().K.astype(np.float32))
    assert s["flipped"] is False and (s["sequence"], s["frame_id"]) == ("00", "000000")
    val = SymphoniesPipeline(FakeReader(), _cfg(), "val")(FRAME, None)
    assert val["flipped"] is False  # no augmentation outside training
    assert "target" not in SymphoniesPipeline(FakeReader(), _cfg(), "predict")(FRAME, None)


def test_tile_ids_follow_the_projection():
    s = SymphoniesPipeline(FakeReader(), _cfg(flip_prob=0.0), "train")(FRAME, None)
    u, v = s["projected_pix_1"][:, 0], s["projected_pix_1"][:, 1]
    ok = s["fov_mask_1"]
    expected = np.where(ok, (v * 8 // 46) * 8 + u * 8 // 152, -1)  # 8 x 8 tiles of the 152 x 46 input
    np.testing.assert_array_equal(s["tile_ids"].reshape(-1), expected)
    assert ok.any() and (~ok).any()


def test_official_flip_quirks():
    pipe = SymphoniesPipeline(FakeReader(), _cfg(flip_mode="official"), "train")
    plain = SymphoniesPipeline(FakeReader(), _cfg(flip_prob=0.0), "train")(FRAME, None)
    s = pipe(FRAME, (0, 0, 0))
    assert s["flipped"] is True
    img = _raw_image(s)
    assert img[0, 0, 0] == 154 and img[0, 151, 0] == 3  # mirrored at the full 155 px width, then cropped
    assert s["depth"][0, 0] == 152.0 and s["depth"][0, 151] == 1.0  # cropped to 152 px, then mirrored
    np.testing.assert_array_equal(s["target"], plain["target"][:, ::-1])  # mirrored in y
    for key in ("cam_K", "cam_pose", "projected_pix_1", "fov_mask_2", "tile_ids"):
        np.testing.assert_array_equal(s[key], plain[key])  # calibration and projections untouched


def test_exact_flip_mirrors_camera_consistently():
    plain = SymphoniesPipeline(FakeReader(), _cfg(flip_prob=0.0), "train")(FRAME, None)
    s = SymphoniesPipeline(FakeReader(), _cfg(flip_mode="exact"), "train")(FRAME, (0, 0, 0))
    img = _raw_image(s)
    assert img[0, 0, 0] == 151 and img[0, 151, 0] == 0  # cropped, then mirrored: same columns as the depth
    assert s["depth"][0, 0] == 152.0
    np.testing.assert_array_equal(s["target"], plain["target"][:, ::-1])
    assert s["cam_K"][0, 2] == pytest.approx(151 - 76.0)
    # voxel (i, j, k) of the flipped sample is voxel (i, Y-1-j, k) of the original, seen at u' = W - 1 - u
    X, Y, Z = 32, 32, 4
    pix_f = s["projected_pix_1"].reshape(X, Y, Z, 2)
    pix_o = plain["projected_pix_1"].reshape(X, Y, Z, 2)[:, ::-1]
    z_f, z_o = s["pix_z_1"].reshape(X, Y, Z), plain["pix_z_1"].reshape(X, Y, Z)[:, ::-1]
    front = z_o > 0.5
    np.testing.assert_allclose(z_f[front], z_o[front], rtol=1e-5)
    du = np.abs(pix_f[..., 0][front] - (151 - pix_o[..., 0][front]))
    dv = np.abs(pix_f[..., 1][front] - pix_o[..., 1][front])
    assert du.max() <= 1 and dv.max() <= 1 and (du == 0).mean() > 0.99 and (dv == 0).mean() > 0.99


def test_image_scale_resizes_image_and_intrinsics():
    K = np.array([[100.0, 0.0, 50.0], [0.0, 80.0, 30.0], [0.0, 0.0, 1.0]])
    K2 = T.resize_intrinsics(K, (200, 100), (100, 50))
    np.testing.assert_allclose(K2, [[50.0, 0, 24.75], [0, 40.0, 14.75], [0, 0, 1]])  # (c + .5) s - .5
    reader = FakeReader(width=1241, height=376)
    s = SymphoniesPipeline(reader, _cfg(crop_size=None, image_scale=0.125, flip_prob=0.0), "train")(FRAME, None)
    assert s["img"].shape == (3, 46, 152)  # round(370 / 8), round(1220 / 8): the dataset crop scaled
    sx = 155 / 1241  # the image is resized to round(1241 / 8) = 155 px
    np.testing.assert_allclose(s["cam_K"][0], [90.0 * sx, 0.0, (76.0 + 0.5) * sx - 0.5], rtol=1e-6)
    assert s["depth"].shape == (46, 152) and s["depth"][0, 0] == 5.0  # nearest: source column 4 (+1)
    # images written at 1/4 scale (ssckit synth --image-scale 0.25) for a 1/8 model input: resized by 1/2
    small = FakeReader(width=310, height=94)
    s = SymphoniesPipeline(small, _cfg(crop_size=None, image_scale=0.125, source_scale=0.25, flip_prob=0.0),
                           "train")(FRAME, None)
    assert s["img"].shape == (3, 46, 152)
    np.testing.assert_allclose(s["cam_K"][0, 0], 90.0 * 155 / 310, rtol=1e-6)


def test_crop_larger_than_image_is_a_data_error():
    with pytest.raises(DataError, match=r"img\.png.*smaller than the 1220x370 crop"):
        SymphoniesPipeline(FakeReader(), _cfg(crop_size=None), "train")(FRAME, None)


def test_collate_stacks_and_lists():
    pipe = SymphoniesPipeline(FakeReader(), _cfg(), "train")
    batch = collate_samples([pipe(FRAME, (0, 0, 0)), pipe(FrameId("00", "000005"), (1, 0, 0))])
    assert batch["img"].shape == (2, 3, 46, 152) and batch["target"].dtype == torch.uint8
    assert batch["tile_ids"].dtype == torch.int64 and batch["num_tiles"].tolist() == [64, 64]
    assert batch["frame_id"] == ["000000", "000005"] and batch["flipped"].dtype == torch.bool
    a = {"x": np.zeros(2), "sequence": "00", "frame_id": "1"}
    with pytest.raises(SsckitError, match="'x'.*00/1"):
        collate_samples([a, {"x": np.zeros(3), "sequence": "00", "frame_id": "2"}])


def test_epoch_sampler_shards_resumes_and_keys():
    one = list(EpochSampler(5, shuffle=True, seed=3, with_aug_key=True))
    assert sorted(i for i, _, _ in one) == [0, 1, 2, 3, 4] and {(s, e) for _, s, e in one} == {(3, 0)}
    assert one == list(EpochSampler(5, shuffle=True, seed=3, with_aug_key=True))  # deterministic
    s = EpochSampler(5, shuffle=True, seed=3)
    s.set_epoch(1)
    assert list(s) != [i for i, _, _ in one]  # a new order each epoch
    shards = [list(EpochSampler(5, True, 3, rank=r, world_size=2, pad=True, with_aug_key=True)) for r in (0, 1)]
    assert [len(x) for x in shards] == [3, 3] and {x for sh in shards for x in sh} == set(one)
    evals = [list(EpochSampler(5, False, 3, rank=r, world_size=2, pad=False)) for r in (0, 1)]
    assert evals == [[0, 2, 4], [1, 3]]
    full = EpochSampler(5, True, 3)
    full.set_epoch(2)
    order = list(full)
    res = EpochSampler(5, True, 3)
    res.resume(2, 3)
    assert list(res) == order[3:] and list(res) == order  # the skip applies to one iteration only
    res.resume(2, 3)
    res.set_epoch(2)
    assert len(list(res)) == 2
    assert len(res) == 5


def test_datamodule_loaders(tiny_data):
    cfg = _cfg(data_root=str(tiny_data["data_root"]), label_root=str(tiny_data["label_root"]),
               depth_root=str(tiny_data["depth_root"]), train_split=None, val_split=None, train_sequences=["00"],
               val_sequences=["08"], batch_size=2, eval_batch_size=2, num_workers=1, flip_prob=0.5)
    dm = SSCDataModule(cfg, "symphonies", seed=1)
    batches = list(dm.train_dataloader())
    assert [b["img"].shape[0] for b in batches] == [2, 2, 1]  # 5 frames
    assert sorted(f for b in batches for f in b["frame_id"]) == [f"{5 * i:06d}" for i in range(5)]
    b = batches[0]
    assert b["target"].shape == (2, 32, 32, 4) and b["depth"].shape == (2, 46, 152)
    assert b["projected_pix_2"].shape == (2, 512, 2) and b["cam_pose"].shape == (2, 4, 4)
    val = list(dm.val_dataloader())
    assert [x["frame_id"] for x in val] == [["000000", "000005"], ["000010"]]
    # npy targets equal the ones computed from voxels/*.label + .invalid
    computed = SSCDataModule(dataclasses.replace(cfg, label_root=None, num_workers=0), "symphonies", seed=1)
    np.testing.assert_array_equal(next(iter(computed.val_dataloader()))["target"], val[0]["target"])
    t = val[0]["target"][0]
    assert (t[:, :10, 0] == 9).float().mean() > 0.9  # road (raw 40) on the ground layer
    assert (t[:, 26:, 1] == 13).float().mean() > 0.9  # building (raw 50) above the far sidewalk
    # every process must get an evaluation frame (unpadded shards), else the others wait forever in collectives
    dm.trainer = types.SimpleNamespace(global_rank=3, world_size=4)
    with pytest.raises(SsckitError, match="3 evaluation frame.*4 processes"):
        dm.val_dataloader()


def test_missing_root_and_layout_are_one_line_errors(tmp_path, tiny_data):
    dm = SSCDataModule(_cfg(), "symphonies")
    with pytest.raises(SsckitError, match="--data-root"):
        dm.reader("train")
    dm = SSCDataModule(_cfg(data_root=str(tmp_path)), "symphonies")
    with pytest.raises(DataError, match="sequences"):
        dm.reader("train")
    dm = SSCDataModule(_cfg(data_root=str(tiny_data["data_root"]), train_split=None, train_sequences=["00"],
                            depth_root=str(tmp_path / "nowhere"), num_workers=1), "symphonies")
    with pytest.raises(SsckitError) as e:
        next(iter(dm.train_dataloader()))
    msg = str(e.value)
    assert "\n" not in msg and "nowhere" in msg and msg.startswith("frame 00/")
    assert isinstance(SemanticKITTI(tiny_data["data_root"], sequences=["08"]).frames[0], FrameId)
