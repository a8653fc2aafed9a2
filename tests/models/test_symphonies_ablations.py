"""Symphonies ablations and quirk flags: FLoSP lifting, pix2vox / reference-normalization flags on the tiny oracle,
the no-instance-query model (no query parameters, every parameter gets a gradient)."""
from __future__ import annotations

import pytest
import torch

from ssckit.errors import SsckitError
from ssckit.models import build_model, model_config
from ssckit.models.decoders import SymphoniesDecoder, convert_official_decoder_state_dict
from ssckit.models.lifting import flosp, voxel_hit_mask
from ssckit.models.segmentors.symphonies import example_batch


def _ramp(h, w, scale=1.0):
    """(1, 1, h, w) map with value scale * (u + 10 v) at pixel (u, v): bilinear sampling of it is exact."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return (scale * (u + 10 * v))[None, None]


def test_flosp_samples_pixel_centres_and_sums_levels():
    fine, coarse = _ramp(4, 6), _ramp(2, 3, scale=100.0)
    # normalized (x, y) -> pixel (u, v) = (x * w - 0.5, y * h - 0.5) on each level (align_corners=False)
    ref = torch.tensor([[[1.5 / 6, 2.5 / 4], [0.5 / 3, 0.5 / 2], [0.5, 0.5], [0.9, 0.1]]])  # (1, 4, 2)
    fov = torch.tensor([[True, True, True, False]])
    out = flosp([fine, coarse], ref, fov)
    assert out.shape == (1, 4, 1)
    # point 0: fine pixel (1, 2) -> 21; coarse (u, v) = (0.75, 1.25) - 0.5 = (0.25, 0.75) -> 100 * (0.25 + 7.5)
    # point 1: fine (0.5*6/3 - 0.5, 0.5*4/2 - 0.5) = (0.5, 0.5) -> 5.5; coarse pixel (0, 0) -> 0
    # point 2: fine (2.5, 1.5) -> 17.5; coarse (1.0, 0.5) -> 100 * 6
    # point 3: outside the FOV -> 0
    want = torch.tensor([21 + 775.0, 5.5, 17.5 + 600.0, 0.0])
    torch.testing.assert_close(out[0, :, 0], want, rtol=0, atol=1e-4)


def test_flosp_zero_padding_and_batch():
    img = torch.ones(2, 3, 4, 4)
    img[1] *= 2
    ref = torch.tensor([[[0.5, 0.5], [-0.5, 0.5]], [[1.0, 1.0], [0.5, 0.5]]])  # outside / corner
    out = flosp([img], ref, torch.ones(2, 2, dtype=torch.bool))
    # (0, 0): inside -> 1; (0, 1): far outside -> 0; (1, 0): corner (u, v) = (3.5, 3.5) -> 1/4 of 2; (1, 1) -> 2
    want = torch.tensor([[1.0, 0.0], [0.5, 2.0]])[..., None].expand(2, 2, 3)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    single = flosp([img[1:]], ref[1:], torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(out[1:], single)


def _small_decoder(**kw):
    torch.manual_seed(0)
    return SymphoniesDecoder(16, 5, (4, 3, 4), (16, 24), 4.0, 2, num_layers=2, num_heads=2, num_points=2, **kw)


def _small_inputs(b=2):
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(b, 16, 4, 6, generator=g), torch.randn(b, 16, 2, 3, generator=g)]
    feats.append(torch.randn(b, 16, 1, 2, generator=g))
    k = torch.tensor([[20.0, 0, 12], [0, 20.0, 8], [0, 0, 1]]).expand(b, 3, 3)
    pose = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]]).expand(b, 4, 4)
    pix = torch.randint(-5, 30, (b, 4 * 3 * 8, 2), generator=g)
    fov = (pix[..., 0] >= 0) & (pix[..., 0] < 24) & (pix[..., 1] >= 0) & (pix[..., 1] < 16)
    return (feats, torch.randn(b, 7, 16, generator=g), torch.rand(b, 7, 2, generator=g),
            torch.rand(b, 16, 24, generator=g) * 14 + 1, k, pose, torch.tensor([[0.0, -6, -2]]).expand(b, 3), pix, fov)


def test_decoder_flosp_lifting_adds_features_to_scene_embed():
    dec = _small_decoder(lifting="flosp").eval()
    inputs = _small_inputs()
    with torch.no_grad():
        _, inter = dec.forward_with_intermediates(*inputs)
    g = inter["geometry"]
    lifted = flosp(inputs[0], g.ref_pix, g.fov_mask)  # (B, N, C)
    want = dec.scene_embed.weight[None] + lifted
    got = inter["scene_after_vpl"].permute(0, 2, 3, 4, 1).reshape(2, -1, 16)  # (B, N, C)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert lifted[~g.fov_mask].abs().max() == 0 and lifted[g.fov_mask].abs().min() > 0
    assert not any(p.startswith("voxel_proposal") for p, _ in dec.named_parameters())


# ---------------------------------------------------------------- quirk flags on the official tiny oracle
@pytest.fixture(scope="module")
def tiny(oracle_dir):
    return torch.load(oracle_dir / "symphonies" / "symphonies_tiny_oracle.pt", weights_only=True)


def _oracle_decoder(tiny, **kw):
    meta = tiny["meta"]
    dec = SymphoniesDecoder(meta["embed_dims"], meta["num_classes"], tuple(meta["decode_grid_xyz"]),
                            tuple(meta["image_hw"]), meta["decoder_voxel_size_m"], meta["downsample_z"],
                            num_layers=meta["num_layers"], **kw)
    dec.load_state_dict(convert_official_decoder_state_dict(tiny["decoder_state_dict"]), strict=True)
    return dec.eval()


def _oracle_args(inp):
    return (inp["feats"], inp["queries"], inp["pred_pts"], inp["depth"], inp["cam_K"], inp["cam_pose"],
            inp["voxel_origin"], inp["projected_pix_2"], inp["fov_mask_2"])


def test_pix2vox_truncate_false_uses_containing_voxel(tiny):
    dec = _oracle_decoder(tiny, pix2vox_truncate=False)
    inp, it = tiny["inputs"], tiny["intermediates"]
    with torch.no_grad():
        out, inter = dec.forward_with_intermediates(*_oracle_args(inp))
    # the oracle's float coordinates carry the -0.5 offset (z then divided by downsample_z = 2); without it the
    # index is floor(coord + (0.5, 0.5, 0.25))
    assert dec.downsample_z == 2
    want = voxel_hit_mask(torch.floor(it["vol_pts_float"] + torch.tensor([0.5, 0.5, 0.25])).long(), dec.grid_shape)
    g = inter["geometry"]
    assert int((g.proposal_mask != want).sum()) <= 2  # boundary pixels may flip (oracle README)
    assert int((g.proposal_mask[0] != it["proposal_mask"]).sum()) > 10
    ref = tiny["outputs"]["ssc_logits"]
    assert (out[0] - ref).abs().max() > 1e-2


def test_ref_normalize_quirk_false_uses_voxel_centres(tiny):
    dec = _oracle_decoder(tiny, ref_normalize_quirk=False)
    sx, sy, sz = dec.grid_shape
    torch.testing.assert_close(dec.voxel_ref[0], torch.tensor([0.5 / sx, 0.5 / sy, 0.5 / sz]))
    torch.testing.assert_close(dec.voxel_ref[-1], torch.tensor([1 - 0.5 / sx, 1 - 0.5 / sy, 1 - 0.5 / sz]))
    with torch.no_grad():
        out = dec(*_oracle_args(tiny["inputs"]))
    assert (out[0] - tiny["outputs"]["ssc_logits"]).abs().max() > 1e-2


# ---------------------------------------------------------------- whole model
def test_no_instance_queries_model_has_no_query_params_and_trains():
    torch.manual_seed(0)
    cfg = model_config("symphonies", {"preset": "tiny", "use_instance_queries": False})
    model = build_model("symphonies", cfg).train()
    names = [n for n, _ in model.named_parameters()]
    assert not any("query_embed" in n or "pts_embed" in n or "query_" in n for n in names)
    assert model.encoder.query_embed is None and model.encoder.pts_embed is None
    batch = example_batch(cfg, batch_size=2)
    loss = model.loss(model(batch), batch)["total"]
    loss.backward()
    # DDP (find_unused_parameters=False) needs a gradient for every trainable parameter
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused[:5]


def test_config_lifting_switch():
    assert model_config("symphonies", {"preset": "tiny"}).lifting == "voxel_proposal"
    with pytest.raises(SsckitError, match="lifting"):
        build_model("symphonies", model_config("symphonies", {"preset": "tiny", "lifting": "lss"}))
    with pytest.raises(SsckitError, match="use_voxel_proposal"):
        model_config("symphonies", {"preset": "tiny", "use_voxel_proposal": False})
