"""MSDA op and module: a naive per-point loop, gradcheck, the mmcv unit oracle and the mmcv init oracle."""
from __future__ import annotations

import math

import pytest
import torch

from ssckit.errors import SsckitError
from ssckit.ops import msda as msda_mod
from ssckit.ops.msda import MultiScaleDeformableAttention, ms_deform_attn, ms_deform_attn_torch, \
    register_msda_backend


def _naive_msda(value, shapes, loc, attw):
    """Bilinear sampling written out per (batch, query, head, level, point, corner); align_corners=False, zeros."""
    b_n, n_q, n_h, n_l, n_p, _ = loc.shape
    d = value.shape[-1]
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b_n, n_q, n_h * d, dtype=value.dtype)
    for b in range(b_n):
        for q in range(n_q):
            for hd in range(n_h):
                acc = torch.zeros(d, dtype=value.dtype)
                for lv, (h, w) in enumerate(shapes):
                    for p in range(n_p):
                        px = loc[b, q, hd, lv, p, 0].item() * w - 0.5
                        py = loc[b, q, hd, lv, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(px), math.floor(py)
                        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                            wgt = (1 - abs(px - xi)) * (1 - abs(py - yi))
                            if 0 <= xi < w and 0 <= yi < h:
                                acc += attw[b, q, hd, lv, p] * wgt * value[b, starts[lv] + yi * w + xi, hd]
                out[b, q, hd * d:(hd + 1) * d] = acc
    return out


def _random_case(dtype, b=2, nq=3, nh=2, d=3, shapes=((3, 4), (2, 5)), npts=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    nv = sum(h * w for h, w in shapes)
    value = torch.randn(b, nv, nh, d, generator=g, dtype=dtype)
    loc = torch.rand(b, nq, nh, len(shapes), npts, 2, generator=g, dtype=dtype) * 1.3 - 0.15  # some outside
    attw = torch.rand(b, nq, nh, len(shapes), npts, generator=g, dtype=dtype)
    return value, torch.tensor(shapes, dtype=torch.long), loc, attw


def test_torch_backend_matches_naive_loop_float64():
    value, shapes, loc, attw = _random_case(torch.float64)
    got = ms_deform_attn_torch(value, shapes, loc, attw)
    want = _naive_msda(value, shapes.tolist(), loc, attw)
    assert got.shape == (2, 3, 6)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_pixel_centre_reads_exact_value():
    # location ((j+0.5)/w, (i+0.5)/h) is exactly pixel (i, j); weight 1 -> that value
    value = torch.arange(12, dtype=torch.float64).view(1, 12, 1, 1)
    loc = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn_torch(value, torch.tensor([[3, 4]]), loc, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64))
    assert out.item() == 6.0  # row 1, column 2 of a 3x4 map


def test_gradcheck_core_float64():
    value, shapes, loc, attw = _random_case(torch.float64, b=1, nq=2, nh=2, d=2, shapes=((2, 3), (2, 2)), seed=3)
    loc = loc.clamp(0.05, 0.95)  # away from the kinks at the border
    inputs = (value.requires_grad_(), loc.requires_grad_(), attw.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn_torch(v, shapes, l, a), inputs,
                                    eps=1e-6, atol=1e-5)


def test_backend_registry_and_env(monkeypatch):
    calls = []

    def fake(value, shapes, loc, attw):
        calls.append(1)
        return ms_deform_attn_torch(value, shapes, loc, attw) * 0

    register_msda_backend("fake-test", fake)
    try:
        value, shapes, loc, attw = _random_case(torch.float32)
        monkeypatch.setenv("SSCKIT_MSDA_BACKEND", "fake-test")
        assert ms_deform_attn(value, shapes, loc, attw).abs().max() == 0 and calls
        assert ms_deform_attn(value, shapes, loc, attw, backend="torch").abs().max() > 0
        monkeypatch.setenv("SSCKIT_MSDA_BACKEND", "nope")
        with pytest.raises(SsckitError, match="torch"):
            ms_deform_attn(value, shapes, loc, attw)
    finally:
        msda_mod._BACKENDS.pop("fake-test")


def _oracle_msda(oracle_dir):
    units = torch.load(oracle_dir / "symphonies" / "symphonies_unit_oracles.pt", weights_only=True)
    return units


def test_module_matches_mmcv_oracle(oracle_dir):
    o = _oracle_msda(oracle_dir)["msda"]
    cfg = o["config"]
    m = MultiScaleDeformableAttention(cfg["embed_dims"], cfg["num_heads"], cfg["num_levels"], cfg["num_points"])
    m.load_state_dict(o["state_dict"])
    m.eval()
    with torch.no_grad():
        out = m(o["query"], o["value"], o["reference_points"], o["spatial_shapes"], o["level_start_index"],
                query_pos=o["query_pos"])
        out0 = m(o["query"], o["value"], o["reference_points"], o["spatial_shapes"], query_pos=o["query_pos"],
                 identity=torch.zeros_like(o["query"]))
        m.add_identity = False
        out_noid = m(o["query"], o["value"], o["reference_points"], o["spatial_shapes"], query_pos=o["query_pos"])
    torch.testing.assert_close(out, o["output"], rtol=0, atol=2e-6)
    torch.testing.assert_close(out0, o["output_identity_zero"], rtol=0, atol=2e-6)
    torch.testing.assert_close(out_noid, o["output_identity_zero"], rtol=0, atol=2e-6)


def test_module_padding_mask_and_batch(oracle_dir):
    o = _oracle_msda(oracle_dir)["msda"]
    m = MultiScaleDeformableAttention(32, 4, 2, 3).eval()
    m.load_state_dict(o["state_dict"])
    q2, v2 = o["query"].repeat(2, 1, 1), o["value"].repeat(2, 1, 1)
    mask = torch.zeros(2, v2.shape[1], dtype=torch.bool)
    mask[1, 5:20] = True
    args = (o["reference_points"].repeat(2, 1, 1, 1), o["spatial_shapes"])
    with torch.no_grad():
        out_a = m(q2, v2, *args, query_pos=o["query_pos"].repeat(2, 1, 1), value_padding_mask=mask)
        v2[1, 5:20] = 1e3  # masked tokens' content must not matter
        out_b = m(q2, v2, *args, query_pos=o["query_pos"].repeat(2, 1, 1), value_padding_mask=mask)
    torch.testing.assert_close(out_a[0:1], o["output"], rtol=0, atol=2e-6)  # batch 2, sample 0 untouched
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    assert not torch.allclose(out_a[1], out_a[0])  # the mask did change sample 1


def test_init_matches_mmcv_oracle(oracle_dir):
    ref = _oracle_msda(oracle_dir)["msda_init_state_dict_embed128_h8_l3_p4"]
    torch.manual_seed(0)
    m = MultiScaleDeformableAttention(128, 8, 3, 4)
    sd = m.state_dict()
    assert sd.keys() == ref.keys()
    # the deterministic part, exactly
    for k in ("sampling_offsets.weight", "sampling_offsets.bias", "attention_weights.weight",
              "attention_weights.bias", "value_proj.bias", "output_proj.bias"):
        torch.testing.assert_close(sd[k], ref[k], rtol=0, atol=0)
    # head 2 of 8 points along +y; point p (1-based) of each level is p * (0, 1)
    bias = sd["sampling_offsets.bias"].view(8, 3, 4, 2)
    assert torch.allclose(bias[2, 1, :, 1], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # xavier-uniform projections: bound sqrt(6 / (fan_in + fan_out)); same RNG consumption as mmcv -> same draws
    bound = math.sqrt(6 / 256)
    for k in ("value_proj.weight", "output_proj.weight"):
        assert sd[k].abs().max() <= bound and ref[k].abs().max() <= bound
        torch.testing.assert_close(sd[k], ref[k], rtol=0, atol=0)
