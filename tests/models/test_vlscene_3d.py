"""VLScene 3-D modules against the official-code oracles (vlscene_unit_oracles.pt): lift-splat, GSSA, occ head."""
from __future__ import annotations

import pytest
import torch

from ssckit.models.decoders.gssa import GSSA
from ssckit.models.heads.occ_head import OccHead
from ssckit.models.lifting.lift_splat import LiftSplat, splat, voxel_indices
from ssckit.ops.sparse_conv import SparseVoxels, spconv_available

needs_spconv = pytest.mark.skipif(not spconv_available(), reason="spconv not importable")


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: the oracle was generated single-threaded, and spconv's threaded CPU path is not
    deterministic; tiny convs are also faster this way."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def oracles(oracle_dir):
    path = oracle_dir / "vlscene" / "vlscene_unit_oracles.pt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * expected.abs().max().item())


# ---------------------------------------------------------------- lift-splat


def _lift(entry, truncate_toward_zero: bool = True) -> LiftSplat:
    cfg, grid = entry["config"], entry["config"]["grid_config"]
    return LiftSplat(cfg["data_config"]["input_size"], cfg["downsample"], grid["xbound"], grid["ybound"],
                     grid["zbound"], grid["dbound"], truncate_toward_zero)


def _cams(inputs):
    return tuple(inputs[k] for k in ("rots", "trans", "intrins", "post_rots", "post_trans", "bda"))


def test_lift_splat_matches_oracle(oracles):
    e = oracles["lift_splat"]
    lift, cams = _lift(e), _cams(e["inputs"])
    assert torch.equal(lift.frustum, e["frustum"])
    for k in ("dx", "bx", "nx"):
        assert torch.equal(getattr(lift, k), e[k])
    _close(lift.mlp_input(*cams), e["mlp_input"], 1e-6)
    geom = lift.geometry(*cams)
    _close(geom, e["geom"], 1e-6)
    assert torch.equal(voxel_indices(geom, lift.dx, lift.bx), voxel_indices(e["geom"], e["dx"], e["bx"]))
    out = lift(e["inputs"]["depth_prob"], e["inputs"]["img_feat"], *cams)
    assert out.shape == e["output"].shape == (1, 8, 16, 16, 4)
    assert torch.equal(out.ne(0), e["output"].ne(0))
    assert int(out.ne(0).any(1).sum()) == 352
    _close(out, e["output"], 1e-5)


def test_lift_splat_camera_vector_order(oracles):
    e = oracles["lift_splat"]
    vec = _lift(e).mlp_input(*_cams(e["inputs"]))[0, 0]
    p2 = e["inputs"]["P2"]
    assert vec[:7].tolist() == [p2[0, 0].item(), p2[1, 1].item(), p2[0, 2].item(), p2[1, 2].item(),
                                p2[0, 3].item(), p2[1, 3].item(), p2[2, 3].item()]
    cam2lidar = torch.linalg.inv(e["inputs"]["Tr"].double())[:3].float()  # camera -> LiDAR [R | t]
    torch.testing.assert_close(vec[18:].view(3, 4), cam2lidar, atol=1e-5, rtol=0)


def test_voxel_index_truncation_vs_floor():
    """Official ``.long()`` truncates toward zero: a point up to one voxel below the lower bound lands in 0."""
    dx, bx = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.5, 0.5, 0.5])  # grid starts at 0
    # one point per depth bin of a 1x1 image: x = -0.5 (below the grid), 1.5, -1.5
    geom = torch.tensor([[-0.5, 0.2, 0.2], [1.5, 0.2, 1.2], [-1.5, 0.2, 0.2]]).view(1, 1, 3, 1, 1, 3)
    assert voxel_indices(geom, dx, bx).view(3, 3).tolist() == [[0, 0, 0], [1, 0, 1], [-1, 0, 0]]
    assert voxel_indices(geom, dx, bx, False).view(3, 3).tolist() == [[-1, 0, 0], [1, 0, 1], [-2, 0, 0]]
    depth = torch.tensor([2.0, 3.0, 5.0]).view(1, 1, 3, 1, 1)
    feat = torch.tensor([1.0, 10.0]).view(1, 1, 2, 1, 1)
    trunc = splat(geom, depth, feat, dx, bx, (2, 2, 2))
    floor = splat(geom, depth, feat, dx, bx, (2, 2, 2), truncate_toward_zero=False)
    expected = torch.zeros(1, 2, 2, 2, 2)
    expected[0, :, 1, 0, 1] = torch.tensor([3.0, 30.0])
    assert torch.equal(floor, expected)
    expected[0, :, 0, 0, 0] = torch.tensor([2.0, 20.0])
    assert torch.equal(trunc, expected)


def test_lift_splat_batch_of_two(oracles):
    e = oracles["lift_splat"]
    two = {k: torch.cat([v, v]) for k, v in e["inputs"].items() if k not in ("P2", "Tr")}
    out = _lift(e)(two["depth_prob"], two["img_feat"], *_cams(two))
    _close(out[0], e["output"][0], 1e-5)
    _close(out[1], e["output"][0], 1e-5)


# ---------------------------------------------------------------- GSSA


def _gssa(entry, **kw) -> GSSA:
    cfg = entry["config"]
    model = GSSA(cfg["output_shape"], cfg["num_input_features"], cfg["init_size"], **kw).eval()
    model.load_state_dict(entry["state_dict"], strict=True)
    return model


@pytest.mark.parametrize("backend", ["dense", pytest.param("spconv", marks=needs_spconv)])
def test_gssa_matches_oracle(oracles, backend):
    e = oracles["gssa"]
    model, x, inter = _gssa(e, sparse_backend=backend), e["inputs"]["x"], e["intermediates"]
    with torch.no_grad():
        ngp = model.ngp(x)
        sparse = SparseVoxels.from_dense(ngp, backend)
        out = model(x)
    _close(ngp, inter["ngp_out"], 1e-5)
    assert torch.equal(sparse.indices, inter["active_coords"])  # same active set, same (b, x, y, z) order
    _close(sparse.features, inter["active_feats"], 1e-5)
    assert out.shape == e["output"].shape == (1, 32, 20, 16, 8)
    assert torch.equal(out.ne(0).any(1), e["output"].ne(0).any(1))
    _close(out, e["output"], 1e-4)


def test_gssa_flags_change_outputs(oracles):
    """Both non-default flags move the output far outside the oracle tolerance (they are real alternatives)."""
    e = oracles["gssa"]
    ref = e["output"]
    with torch.no_grad():
        for kw in ({"reuse_indice_pairs": True}, {"official_ddcm": False}):
            out = _gssa(e, sparse_backend="dense", **kw)(e["inputs"]["x"])
            assert (out - ref).abs().max() > 1e-2 * ref.abs().max()


def test_gssa_batch_of_two(oracles):
    e = oracles["gssa"]
    x = e["inputs"]["x"]
    with torch.no_grad():
        out = _gssa(e, sparse_backend="dense")(torch.cat([x, x]))
    _close(out[0], e["output"][0], 1e-4)
    _close(out[1], e["output"][0], 1e-4)


@needs_spconv
def test_gssa_dense_matches_spconv_random_weights():
    torch.manual_seed(0)
    model = GSSA((9, 8, 6), 5, 4, sparse_backend="dense").eval()
    x = torch.randn(2, 5, 9, 8, 6) * (torch.rand(2, 1, 9, 8, 6) < 0.05)
    with torch.no_grad():
        dense = model(x)
        model.sparse_backend = "spconv"
        sp = model(x)
    _close(sp, dense, 1e-5)


def test_gssa_backward_runs():
    torch.manual_seed(0)
    model = GSSA((8, 8, 4), 4, 4, sparse_backend="dense").train()
    x = (torch.randn(1, 4, 8, 8, 4) * (torch.rand(1, 1, 8, 8, 4) < 0.1)).requires_grad_()
    model(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert model.resBlock3.conv1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- occupancy head


def test_occ_head_matches_oracle(oracles):
    e = oracles["occhead_voxel"]
    head = OccHead(in_channels=e["config"]["ctor"]["in_channels"][0]).eval()
    head.load_state_dict(e["state_dict_voxel_path"], strict=True)
    x, inter = e["inputs"]["voxel_feats0"], e["intermediates"]
    with torch.no_grad():
        occ = head.occ_convs[0](x)
        conv_in = head.sdb.conv_in(occ)
        mpac0 = head.sdb.diffusion[0](conv_in)
        mpac1 = head.sdb.diffusion[1](mpac0)
        aspp = head.sdb.aspp(mpac1)
        out = head(x)
        two = head(torch.cat([x, x]))
    for name, val in (("occ_conv", occ), ("sdb_conv_in", conv_in), ("mpac0", mpac0), ("mpac1", mpac1),
                      ("aspp", aspp)):
        _close(val, inter[name], 1e-5)
    assert out.shape == e["output"].shape == (1, 20, 16, 12, 8)
    _close(out, e["output"], 1e-5)
    _close(two[1], e["output"][0], 1e-5)
    up = torch.nn.functional.interpolate(out, size=(32, 24, 16), mode="trilinear", align_corners=False)
    _close(up, e["output_test_interp_to_2x"], 1e-5)


# ---------------------------------------------------------------- full-size parameter counts (vlscene_params.txt)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_parameter_counts():
    gssa = GSSA((128, 128, 16), 128, 64)
    assert _count(gssa.pre_conv) == 1_523_712
    assert [_count(getattr(gssa, n)) for n in ("downCntx", "resBlock2", "resBlock3", "upBlock2", "upBlock3",
                                               "ReconNet")] == [147_968, 885_760, 3_540_992, 5_310_464,
                                                                1_770_496, 148_224]
    assert _count(gssa) == 13_327_616
    head = OccHead(256)
    assert [_count(head.occ_convs), _count(head.sdb), _count(head.ssc_header)] == [884_992, 683_520, 1_428]
    lift = LiftSplat((384, 1280), 8, [0, 51.2, 0.4], [-25.6, 25.6, 0.4], [-2, 4.4, 0.4], [2, 58, 0.5])
    assert _count(lift) == 0 and lift.frustum.shape == (112, 48, 160, 3) and lift.grid_shape == (128, 128, 16)
