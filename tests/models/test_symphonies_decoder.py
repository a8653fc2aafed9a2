"""Symphonies decoder vs the official tiny oracle (weights, geometry, intermediates, logits), batching, switches."""
from __future__ import annotations

import pytest
import torch

from ssckit.models.decoders import (SymphoniesDecoder, SymphoniesGeometry, convert_official_decoder_state_dict,
                                    official_decoder_key)


@pytest.fixture(scope="module")
def tiny(oracle_dir):
    return torch.load(oracle_dir / "symphonies" / "symphonies_tiny_oracle.pt", weights_only=True)


@pytest.fixture(scope="module")
def decoder(tiny):
    meta = tiny["meta"]
    dec = SymphoniesDecoder(meta["embed_dims"], meta["num_classes"], tuple(meta["decode_grid_xyz"]),
                            tuple(meta["image_hw"]), meta["decoder_voxel_size_m"], meta["downsample_z"],
                            num_layers=meta["num_layers"])
    dec.load_state_dict(convert_official_decoder_state_dict(tiny["decoder_state_dict"]), strict=True)
    return dec.eval()


def _args(inputs, b=1):
    rep = (lambda t: t.repeat(b, *([1] * (t.dim() - 1)))) if b > 1 else (lambda t: t)
    return ([rep(f) for f in inputs["feats"]], rep(inputs["queries"]), rep(inputs["pred_pts"]), rep(inputs["depth"]),
            rep(inputs["cam_K"]), rep(inputs["cam_pose"]), rep(inputs["voxel_origin"]),
            rep(inputs["projected_pix_2"]), rep(inputs["fov_mask_2"]))


def _close(got, want, rel=1e-4):
    torch.testing.assert_close(got, want, rtol=0, atol=rel * want.abs().max().item())


def test_official_keys_and_param_count(oracle_dir):
    rows = (oracle_dir / "symphonies" / "symphonies_state_dict.tsv").read_text().splitlines()[1:]
    official = {}
    n_params = 0
    for row in rows:
        key, shape, numel, _, kind = row.split("\t")
        if key.startswith("decoder.") and key.split(".")[1] not in ("image_grid", "voxel_grid"):
            official[official_decoder_key(key)] = [] if shape == "scalar" else [int(s) for s in shape.split("x")]
            n_params += int(numel) if kind == "param" else 0
    with torch.device("meta"):
        full = SymphoniesDecoder()  # official defaults: 128 x 128 x 8, 370 x 1220, embed 128, 20 classes
    ours = {k: list(v.shape) for k, v in full.state_dict().items()}
    assert ours == official
    # spec §13: scene_embed 16,777,216 + PE 57,600 + VPL 202,400 + 2 x 715,040 + 458,720 + ASPP 1,770,496 + head 888,084
    assert sum(p.numel() for p in full.parameters()) == n_params == 21_584_596


def test_geometry_matches_oracle(tiny, decoder):
    it, inp, sd = tiny["intermediates"], tiny["inputs"], tiny["decoder_state_dict"]
    torch.testing.assert_close(decoder.image_grid[None], sd["image_grid"], rtol=0, atol=0)
    torch.testing.assert_close(decoder.voxel_ref.T.reshape(sd["voxel_grid"].shape), sd["voxel_grid"], rtol=0, atol=0)
    g = decoder.compute_geometry(inp["depth"], inp["cam_K"], inp["cam_pose"], inp["voxel_origin"],
                                 inp["projected_pix_2"], inp["fov_mask_2"], inp["pred_pts"])
    assert torch.equal(g.projected_pix, it["projected_pix_interp"])
    assert torch.equal(g.fov_mask, it["fov_mask_interp"]) and int(g.fov_mask.sum()) == 130
    torch.testing.assert_close(g.vol_pts, it["vol_pts_float"], rtol=0, atol=1e-4)
    assert int((g.proposal_mask[0] != it["proposal_mask"]).sum()) <= 2  # boundary pixels may flip (README)
    assert int(it["proposal_mask"].sum()) == 150
    torch.testing.assert_close(g.ref_pix, it["ref_pix"], rtol=0, atol=1e-7)
    assert int((g.ref_3d - it["ref_3d"]).abs().gt(1e-6).any(-1).sum()) <= 2


def test_decoder_matches_oracle(tiny, decoder):
    it = tiny["intermediates"]
    geom = SymphoniesGeometry(it["fov_mask_interp"], it["ref_pix"], it["proposal_mask"][None], it["ref_3d"])
    with torch.no_grad():
        outs, inter = decoder.forward_with_intermediates(*_args(tiny["inputs"]), geometry=geom)
    _close(inter["scene_after_vpl"], it["scene_after_vpl"])
    for i in range(3):
        _close(inter["scene_after_layer"][i], it["scene_after_layer"][i])
        _close(inter["queries_after_layer"][i], it["queries_after_layer"][i])
    assert len(outs) == 1 and outs[0].shape == (1, 20, 24, 20, 32)
    torch.testing.assert_close(outs[0], tiny["outputs"]["ssc_logits"], rtol=0, atol=1e-3)


def test_batch_of_copies_equals_batch_one(tiny, decoder):
    with torch.no_grad():
        single = decoder(*_args(tiny["inputs"]))[0]
        double = decoder(*_args(tiny["inputs"], b=2))[0]
    torch.testing.assert_close(single, tiny["outputs"]["ssc_logits"], rtol=0, atol=1e-3)  # own geometry too
    torch.testing.assert_close(double[0:1], single, rtol=0, atol=1e-3)
    torch.testing.assert_close(double[1:2], single, rtol=0, atol=1e-3)


def test_batch_of_different_samples_equals_separate_runs(tiny, decoder):
    a = _args(tiny["inputs"])
    b = list(_args(tiny["inputs"]))
    b[0] = [f.flip(-1) for f in b[0]]
    b[1] = b[1].flip(1)
    b[3] = b[3] * 0.6  # fewer proposal voxels, other anchors
    fov = b[8].clone()
    fov[:, ::3] = False  # fewer FOV voxels -> padding in the batch
    b[8] = fov
    with torch.no_grad():
        out_a, out_b = decoder(*a)[0], decoder(*b)[0]
        both = decoder(*[[torch.cat([x, y]) for x, y in zip(u, v)] if isinstance(u, list) else torch.cat([u, v])
                         for u, v in zip(a, b)])[0]
    assert not torch.allclose(out_a, out_b, atol=1e-2)
    torch.testing.assert_close(both[0:1], out_a, rtol=0, atol=1e-3)
    torch.testing.assert_close(both[1:2], out_b, rtol=0, atol=1e-3)


def _small(**kw):
    torch.manual_seed(0)
    return SymphoniesDecoder(16, 5, (4, 3, 4), (16, 24), 4.0, 2, num_layers=2, num_heads=2, num_points=2, **kw)


def _small_inputs(b=2):
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(b, 16, 4, 6, generator=g), torch.randn(b, 16, 2, 3, generator=g),
             torch.randn(b, 16, 1, 2, generator=g)]
    k = torch.tensor([[20.0, 0, 12], [0, 20.0, 8], [0, 0, 1]]).expand(b, 3, 3)
    pose = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]]).expand(b, 4, 4)  # velo->cam
    pix = torch.randint(-5, 30, (b, 4 * 3 * 8, 2), generator=g)
    fov = (pix[..., 0] >= 0) & (pix[..., 0] < 24) & (pix[..., 1] >= 0) & (pix[..., 1] < 16)
    return (feats, torch.randn(b, 7, 16, generator=g), torch.rand(b, 7, 2, generator=g),
            torch.rand(b, 16, 24, generator=g) * 14 + 1, k, pose, torch.tensor([[0.0, -6, -2]]).expand(b, 3), pix, fov)


def test_training_returns_every_layer_and_backprops():
    dec = _small().train()
    outs = dec(*_small_inputs())
    assert [o.shape for o in outs] == [(2, 5, 8, 6, 16)] * 2
    sum(o.mean() for o in outs).backward()
    assert dec.scene_embed.weight.grad.abs().sum() > 0
    assert dec.layers[0].query_image_cross_deform_attn.attn.value_proj.weight.grad.abs().sum() > 0


def test_aspp_follows_last_layer():
    dec = _small().eval()
    with torch.no_grad():
        outs, inter = dec.forward_with_intermediates(*_small_inputs())
        want = dec.head(dec.aspp(inter["scene_after_layer"][-1]))
    torch.testing.assert_close(outs[-1], want, rtol=0, atol=1e-6)


def test_quirk_flags_change_outputs():
    inputs = _small_inputs()
    with torch.no_grad():
        base = _small().eval()(*inputs)[0]
        for kw in ({"z_offset_quirk": False}, {"stale_scene_values": False}, {"msda_identity": False},
                   {"pix2vox_truncate": False}, {"ref_normalize_quirk": False}):
            assert not torch.allclose(_small(**kw).eval()(*inputs)[0], base, atol=1e-4), kw  # same seed, weights


# switch -> (state-dict key fragments that must vanish, attribute path that must be None)
_ABLATIONS = (
    ({"lifting": "none"}, ("voxel_proposal.",), "voxel_proposal"),
    ({"lifting": "flosp"}, ("voxel_proposal.",), "voxel_proposal"),
    ({"scene_self_attn": False}, (".scene_self_deform_attn.",), "layers.0.scene_self_deform_attn"),
    ({"query_scene_attn": False}, (".query_scene_cross_deform_attn.",), "layers.0.query_scene_cross_deform_attn"),
    ({"query_self_attn": False}, (".query_self_attn.",), "layers.0.query_self_attn"),
    ({"scene_query_attn": False}, (".scene_query_cross_attn.",), "layers.0.scene_query_cross_attn"),
    ({"query_image_attn": False}, (".query_image_cross_deform_attn.",), "layers.0.query_image_cross_deform_attn"),
    ({"use_instance_queries": False}, (".query_image_cross_deform_attn.", ".scene_query_cross_attn.",
                                       ".query_scene_cross_deform_attn.", ".query_self_attn."),
     "layers.0.query_image_cross_deform_attn"),
)


@pytest.mark.parametrize("kw, gone, attr", _ABLATIONS, ids=[str(a[0]) for a in _ABLATIONS])
def test_ablation_switch_removes_module_and_changes_output(kw, gone, attr):
    inputs = _small_inputs()
    base = _small().eval()
    abl = _small(**kw).eval()
    parent, _, name = attr.rpartition(".")
    assert getattr(abl.get_submodule(parent), name) is None
    assert getattr(base.get_submodule(parent), name) is not None
    base_keys, abl_keys = set(base.state_dict()), set(abl.state_dict())
    removed = base_keys - abl_keys
    assert abl_keys < base_keys and removed
    assert all(any(g in k for g in gone) for k in removed)  # nothing else disappeared
    assert not any(g in k for k in abl_keys for g in gone)
    abl.load_state_dict({k: v for k, v in base.state_dict().items() if k in abl_keys}, strict=True)
    queries, pred_pts = (None, None) if kw.get("use_instance_queries") is False else inputs[1:3]
    with torch.no_grad():
        want = base(*inputs)[0]
        got = abl(inputs[0], queries, pred_pts, *inputs[3:])[0]
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert not torch.allclose(got, want, atol=1e-4)


def test_unknown_lifting_is_rejected():
    with pytest.raises(ValueError, match="lifting"):
        _small(lifting="lss")
