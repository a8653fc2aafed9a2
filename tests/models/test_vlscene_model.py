"""VLScene wiring: tiny forward/backward, learning, teacher sources, point head, configs and the official size."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from ssckit.cli import main
from ssckit.errors import SsckitError
from ssckit.models import build_model, get_model_entry
from ssckit.models.heads.point_head import PointHead, project_points
from ssckit.models.segmentors.vlscene import (KITTI360_CLASS_WEIGHTS, VLScene, count_params, example_batch,
                                              vlscene_config)
from ssckit.models.teachers import RandomTeacher, write_cache_entry

# FPN levels 2-4 exist (official keys) but only the stride-8 map is used, as in the official model
UNUSED = {f"img_neck.fpn_convs.{i}.conv.{w}" for i in (1, 2, 3) for w in ("weight", "bias")}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convs run fastest single-threaded; spconv's CPU path is deterministic only with one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**overrides) -> VLScene:
    torch.manual_seed(0)
    return VLScene(vlscene_config("tiny", **overrides))


def test_tiny_forward_backward_batch2():
    model = _tiny().train()
    batch = example_batch(model.cfg, batch_size=2, seed=1)
    out = model(batch)
    assert out["ssc_logits"].shape == (2, 20, 64, 64, 8)
    assert out["depth_prob"].shape == (2, 16, 8, 32)
    torch.testing.assert_close(out["depth_prob"].sum(1), torch.ones(2, 8, 32))
    assert out["point_logits"].shape == (2, batch["points"].shape[1], 20)
    assert out["kd_target"].shape == out["kd_student"].shape == (2, 16, 8, 32)
    losses = model.loss(out, batch)
    expected = {"total", "ce_ssc", "sem_scal", "geo_scal", "depth", "kd_feat", "kd_logits", "point_ce", "point_lovasz"}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    total = sum(v for k, v in losses.items() if k != "total")  # weights are all 1
    torch.testing.assert_close(losses["total"].detach(), total)
    losses["total"].backward()
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad == UNUSED
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if n not in UNUSED)

    model.eval()  # inference: logits + depth only, no teacher, no point head; val loss without extras
    with torch.no_grad():
        out = model({k: v for k, v in batch.items() if k not in ("vl_feat", "vl_logits")})
    assert set(out) == {"ssc_logits", "depth_prob"}
    assert set(model.loss(out, {"target": batch["target"]})) == {"total", "ce_ssc", "sem_scal", "geo_scal"}


def test_loss_falls_on_a_fixed_batch():
    model = _tiny().train()
    batch = example_batch(model.cfg, batch_size=2, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(20):
        losses = model.loss(model(batch), batch)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["total"] < 0.9 * first["total"], (first, last)
    for term in ("ce_ssc", "depth", "kd_logits", "point_ce"):
        assert last[term] < first[term], term


def test_teacher_sources_and_state_dict():
    model = _tiny(teacher="cache").train()
    keys = set(model.state_dict())
    batch = example_batch(model.cfg, batch_size=2, seed=0)
    out = model(batch)  # teacher outputs from the batch: no teacher is built
    torch.testing.assert_close(out["kd_teacher_logits"], batch["vl_logits"])
    assert not model._teacher_built
    no_vl = {k: v for k, v in batch.items() if k not in ("vl_feat", "vl_logits")}
    with pytest.raises(SsckitError, match="teacher_cache_root"):
        model(no_vl)
    model.set_teacher(RandomTeacher((8, 32), 32, 21, seed=4))
    out = model(no_vl)
    assert "kd_target" in out and set(model.state_dict()) == keys  # never part of the saved state
    model.set_teacher(None)
    assert "kd_feat" not in model.loss(model(no_vl), no_vl)
    bad = dict(batch, vl_feat=batch["vl_feat"][:, :, :4])
    with pytest.raises(SsckitError, match="do not fit"):
        model(bad)


def test_cached_teacher_by_frame_id(tmp_path):
    g = torch.Generator().manual_seed(0)
    feats, logits = torch.randn(2, 32, 8, 32, generator=g), torch.randn(2, 21, 8, 32, generator=g)
    for i, frame in enumerate(("000000", "000005")):
        write_cache_entry(tmp_path / "07" / f"{frame}.npz", feats[i], logits[i])
    model = _tiny(teacher="cache", teacher_cache_root=str(tmp_path)).train()
    batch = {k: v for k, v in example_batch(model.cfg, 2, 0).items() if k not in ("vl_feat", "vl_logits")}
    batch.update(sequence=["07", "07"], frame_id=["000005", "000000"])
    out = model(batch)
    torch.testing.assert_close(out["kd_teacher_logits"], logits.flip(0).half().float())


def test_point_head_samples_voxels_and_image_at_centres():
    head = PointHead(3, 2, 5, scene_lo=(0.0, -1.5, -1.0), scene_hi=(4.0, 1.5, 1.0))
    x, y, z = torch.meshgrid(torch.arange(4.0), torch.arange(3.0), torch.arange(2.0), indexing="ij")
    voxels = torch.stack([x, y, z])[None]  # (1, 3, X=4, Y=3, Z=2): channel c holds the index along axis c
    centres = torch.tensor([[[2.5, 0.0, -0.5], [0.5, -1.0, 0.5], [3.5, 1.0, 0.5]]])  # voxels (2,1,0) (0,0,1) (3,2,1)
    want = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 0.0, 1.0], [3.0, 2.0, 1.0]]])
    torch.testing.assert_close(head.sample_voxels(voxels, centres), want)
    head.swap_voxel_axes = True  # official: grid (x, y, z) indexes (Z, Y, X)
    assert not torch.allclose(head.sample_voxels(voxels, centres), want)

    with torch.no_grad():
        head.img_feat_reduce.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        head.img_feat_reduce.bias.zero_()
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(8.0), indexing="ij")
    image = torch.stack([cols, rows])[None]  # (1, 2, h=4, w=8) of a 32 x 64 input (stride 8)
    pix = torch.tensor([[[8 * 5 + 4, 8 * 2 + 4], [4, 8 * 3 + 4], [8 * 5 + 4, 8 * 2 + 4], [70.0, 4.0]]])  # u, v
    uv = pix / torch.tensor([64.0, 32.0]) * 2 - 1
    depth = torch.tensor([[5.0, 5.0, -5.0, 5.0]])  # third point behind the camera, fourth outside the image
    got = head.sample_image(image, uv, depth)
    torch.testing.assert_close(got, torch.tensor([[[5.0, 2.0, 0.0], [0.0, 3.0, 0.0], [0.0] * 3, [0.0] * 3]]))


def test_project_points_hand_example():
    tr = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])  # velo (x, y, z) -> (-y, -z, x)
    p = torch.tensor([[100.0, 0, 50, 10], [0, 100, 20, 0], [0, 0, 1, 0]])
    post_rot, post_tran = torch.diag(torch.tensor([0.5, 0.5, 1.0])), torch.tensor([0.0, -3.0, 0.0])
    uv, depth = project_points(torch.tensor([[[10.0, 2.0, 1.0]]]), tr[None], p[None], post_rot[None],
                               post_tran[None], (8, 32))
    # camera (-2, -1, 10) -> pixel (310, 100) / 10 = (31, 10) -> (15.5, 2) -> normalised by (32, 8)
    torch.testing.assert_close(uv, torch.tensor([[[15.5 / 16 - 1, 2 / 4 - 1]]]))
    torch.testing.assert_close(depth, torch.tensor([[10.0]]))


def test_full_size_parameter_counts_match_the_official_model(oracle_dir):
    path = oracle_dir / "vlscene" / "vlscene_params.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    text = path.read_text()
    assert re.search(r"inference path \(learnable\): *44,680,430", text)
    assert re.search(r"train-only heads: *999,083", text)
    with torch.device("meta"):
        model = build_model("vlscene", {"preset": "semantic_kitti"})
    counts = count_params(model)
    assert counts == {"params": 44_680_430, "params_train_only": 999_083, "params_trainable": 45_679_513}
    parts = {n: sum(p.numel() for p in c.parameters()) for n, c in model.named_children()}
    assert parts["gssa"] == 13_327_616 and parts["occ_head"] == 884_992 + 683_520 + 1_428
    assert parts["point_head"] == 137_110 and parts["vl_distill"] == 861_973 and parts["lift"] == 0
    assert model.lift.frustum.shape == (112, 48, 160, 3) and model.lift.grid_shape == (128, 128, 16)


def test_info_command_reports_official_size(capsys):
    assert main(["info", "--model", "vlscene", "--dataset", "semantic_kitti", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert abs(info["params"] - 44_680_430) / 44_680_430 < 0.005
    assert info["params_train_only"] == 999_083 and info["config"]["image_shape"] == [384, 1280]


def test_configs_presets_and_class_weights():
    with pytest.raises(SsckitError, match="embed_dims"):
        vlscene_config("semantic_kitti", embed_dims=3)
    with pytest.raises(SsckitError, match="crop_size"):
        VLScene(vlscene_config("tiny", image_shape=(74, 244)))
    with pytest.raises(SsckitError, match="teacher"):
        VLScene(vlscene_config("tiny", teacher="clip"))
    k360 = vlscene_config("kitti_360")
    assert (k360.num_classes, k360.image_shape, k360.feature_size) == (19, (384, 1408), (48, 176))
    assert len(KITTI360_CLASS_WEIGHTS) == 19 and min(KITTI360_CLASS_WEIGHTS) == 0.464
    tiny = _tiny()
    freq = np.array([5.41773033e09, 1.57835390e07, 1.25136000e05])  # MonoScene counts of classes 0-2
    np.testing.assert_allclose(tiny.class_weights[:3].numpy(), 1 / np.log(freq + 1e-3), rtol=1e-6)
    tiny360 = _tiny(dataset="kitti_360", num_classes=19)
    torch.testing.assert_close(tiny360.class_weights, torch.tensor(KITTI360_CLASS_WEIGHTS))
    cfg = vlscene_config("semantic_kitti")  # quirk defaults: inference = official, training = corrected
    assert (cfg.stereo_disparity_sampling, cfg.official_ddcm, cfg.reuse_indice_pairs, cfg.voxel_index_truncation) \
        == ("official", True, False, True)
    assert not (cfg.depth_legacy_binning or cfg.point_swap_voxel_axes or cfg.point_uv_right_camera
                or cfg.lseg_imagenet_input_quirk or cfg.lseg_misaligned_features_quirk or cfg.kd_detach_teacher)
    entry = get_model_entry("vlscene")
    assert entry.config is type(cfg) and entry.preset("tiny", scene_shape=[32, 32, 4]).scene_shape == (32, 32, 4)


def test_bin_centre_sampling_uses_the_resized_fx():
    model = _tiny(stereo_disparity_sampling="bin_centres").eval()
    batch = example_batch(model.cfg, batch_size=1, seed=2)
    seen = {}

    def grab(module, args):
        seen["fxb"] = args[4].clone()

    model.stereo_net.register_forward_pre_hook(grab)
    with torch.no_grad():
        model(batch)
    torch.testing.assert_close(seen["fxb"], batch["fx_baseline"] * 256 / 1241)
