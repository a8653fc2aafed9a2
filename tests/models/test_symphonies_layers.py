"""Symphonies layers against the official unit oracles, plus hand-derived index conventions."""
from __future__ import annotations

import pytest
import torch

from ssckit.models.layers import (ASPP3D, DeformableSqueezeAttention, DeformableTransformerLayer,
                                  LearnableSqueezePositionalEncoding, TransformerLayer, scatter_selected_tokens,
                                  select_tokens)


@pytest.fixture(scope="module")
def units(oracle_dir):
    return torch.load(oracle_dir / "symphonies" / "symphonies_unit_oracles.pt", weights_only=True)


def _close(got, want, rel=1e-5):
    torch.testing.assert_close(got, want, rtol=0, atol=rel * want.abs().max().item() + 1e-7)


def test_squeeze_attention_oracle(units):
    o = units["squeeze_attn"]
    cfg = o["config"]
    m = DeformableSqueezeAttention(cfg["embed_dims"], cfg["num_heads"], cfg["num_levels"], cfg["num_points"]).eval()
    m.load_state_dict(o["state_dict"])
    value2d, ref2d, shapes2d = m.squeeze(o["value"], o["ref_xyz"], o["volume_shape_xyz"])
    torch.testing.assert_close(value2d, o["squeezed_value"], rtol=0, atol=0)
    torch.testing.assert_close(ref2d, o["squeezed_ref"], rtol=0, atol=1e-7)
    assert shapes2d.tolist() == o["squeezed_shapes"].tolist() == [[15, 4]]
    with torch.no_grad():
        out = m(o["query"], o["value"], o["ref_xyz"], o["volume_shape_xyz"], query_pos=o["query_pos"])
    _close(out, o["output"])


def test_squeeze_index_mapping_by_hand():
    sx, sy, sz = 5, 4, 3
    m = DeformableSqueezeAttention(8, 2, 1, 2)
    value = torch.arange(sx * sy * sz, dtype=torch.float32).view(1, -1, 1).expand(1, -1, 8)  # token id
    ref = torch.tensor([[[[0.5, 1 / 3, 1.0]]]])  # x = 2/(X-1), y = 1/(Y-1), z = 2/(Z-1)
    value2d, ref2d, shapes2d = m.squeeze(value, ref, torch.tensor([[sx, sy, sz]]))
    assert shapes2d.tolist() == [[15, 4]]
    # voxel (i, j, k) = token (i*Y + j)*Z + k sits at row i*Z + k, column j of the 15 x 4 map
    for i, j, k in ((0, 0, 0), (2, 1, 2), (4, 3, 1), (3, 0, 2)):
        assert value2d[0, (i * sz + k) * sy + j, 0].item() == (i * sy + j) * sz + k
    # official quirk: (col, row) = (y, x + (z - 0.5) / Z) = (1/3, 0.5 + 0.5/3)
    torch.testing.assert_close(ref2d[0, 0, 0], torch.tensor([1 / 3, 0.5 + 0.5 / 3]))
    # corrected: row = centre of row i*Z + k = 2*3 + 2 -> 8.5 / 15
    m.z_offset_quirk = False
    _, ref_fixed, _ = m.squeeze(value, ref, torch.tensor([[sx, sy, sz]]))
    torch.testing.assert_close(ref_fixed[0, 0, 0], torch.tensor([1 / 3, 8.5 / 15]))


def test_squeeze_pe_oracle(units):
    o = units["squeeze_pe"]
    cfg = o["config"]
    m = LearnableSqueezePositionalEncoding(tuple(cfg["num_embeds"]), cfg["embed_dims"], tuple(cfg["squeeze_dims"]))
    m.load_state_dict(o["state_dict"])
    assert m.grid_shape == (3, 5, 8)
    with torch.no_grad():
        _close(m(), o["output"])


def test_squeeze_pe_folding_by_hand():
    n, s = (2, 3, 2), (2, 1, 2)  # grid (2, 3, 2*2*1*2 = 8)
    m = LearnableSqueezePositionalEncoding(n, 4, s)
    with torch.no_grad():  # proj picks column 0 of each table
        m.proj.weight.zero_()
        m.proj.bias.zero_()
        m.proj.weight[0, 0] = m.proj.weight[1, 2] = m.proj.weight[2, 4] = 1.0
        out = m()[0]
    e0, e1, e2 = (emb.weight[:, 0] for emb in m.embeds)
    assert m.grid_shape == (2, 3, 8) and out.shape == (48, 4)
    for x in range(2):
        for y in range(3):
            for k in range(8):  # k = ((zc*s0 + a)*s1 + b)*s2 + c with s1 = 1 -> b = 0
                zc, a, c = k // 4, (k // 2) % 2, k % 2
                tok = out[(x * 3 + y) * 8 + k]
                assert tok[0] == e0[x * 2 + a] and tok[1] == e1[y] and tok[2] == e2[zc * 2 + c]


def test_deformable_layer_oracle(units):
    o = units["deform_layer"]
    cfg = o["config"]
    m = DeformableTransformerLayer(cfg["embed_dims"], cfg["num_heads"], cfg["num_levels"], cfg["num_points"],
                                   mlp_ratio=cfg["mlp_ratio"]).eval()
    m.load_state_dict(o["state_dict"])
    with torch.no_grad():
        out = m(o["query"], o["value"], o["ref_pts"], o["spatial_shapes"], query_pos=o["query_pos"])
    _close(out, o["output"])


def test_deformable_layer_identity_flag(units):
    o = units["deform_layer"]
    sd = {k: v for k, v in o["state_dict"].items() if not k.startswith(("norm2", "ffn"))}
    with_id = DeformableTransformerLayer(32, 4, 2, 3, mlp_ratio=0).eval()
    without = DeformableTransformerLayer(32, 4, 2, 3, mlp_ratio=0, add_identity=False).eval()
    with_id.load_state_dict(sd)
    without.load_state_dict(sd)
    args = (o["query"], o["value"], o["ref_pts"], o["spatial_shapes"])
    with torch.no_grad():
        diff = with_id(*args, query_pos=o["query_pos"]) - without(*args, query_pos=o["query_pos"])
        ln = torch.nn.functional.layer_norm(o["query"], (32,), sd["norm1.weight"], sd["norm1.bias"])
    _close(diff, ln)  # x + LN(x) + attn  vs  x + attn


@pytest.mark.parametrize("kind", ["cross", "self"])
def test_mha_layer_oracle(units, kind):
    o = units["mha_layer"][kind]
    cfg = o["config"]
    m = TransformerLayer(cfg["embed_dims"], cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"]).eval()
    m.load_state_dict(o["state_dict"])
    with torch.no_grad():
        if kind == "cross":
            out = m(o["query"], o["key"], o["value"], query_pos=o["query_pos"])
        else:
            out = m(o["query"], query_pos=o["query_pos"])
    _close(out, o["output"])


def test_aspp_oracle(units):
    o = units["aspp"]
    m = ASPP3D(o["config"]["channels"], tuple(o["config"]["dilations"])).eval()
    m.load_state_dict(o["state_dict"])
    with torch.no_grad():
        _close(m(o["input"]), o["output"])


def test_token_selection_pads_and_restores():
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    sel = select_tokens(mask)
    assert sel.index[0].tolist() == [1, 3, 4] and sel.index[1, 0].item() == 0
    assert sel.valid.tolist() == [[True, True, True], [True, False, False]]
    x = torch.arange(10, dtype=torch.float32).view(2, 5, 1)
    out = scatter_selected_tokens(x, torch.full((2, 3, 1), -1.0), sel)
    assert out[..., 0].tolist() == [[0, -1, 2, -1, -1], [-1, 6, 7, 8, 9]]


@pytest.mark.parametrize("centred", [False, True])
def test_corrected_squeeze_row_is_the_voxel_row_centre_for_both_reference_conventions(centred):
    """z_offset_quirk=False: voxel (i, j, k) must sample the centre of squeezed row i*Z + k, whichever way the
    3D references are normalised (official i/(S-1), or (i+0.5)/S with ref_normalize_quirk=False)."""
    from ssckit.models.layers import DeformableSqueezeAttention

    X, Y, Z = 5, 4, 3
    attn = DeformableSqueezeAttention(8, 2, 1, 2, 0.0, True, z_offset_quirk=False, centred_refs=centred)
    idx = torch.stack(torch.meshgrid(torch.arange(X), torch.arange(Y), torch.arange(Z), indexing="ij"), -1)
    idx = idx.reshape(1, -1, 1, 3).double()
    size = torch.tensor([X, Y, Z], dtype=torch.float64)
    ref = (idx + 0.5) / size if centred else idx / (size - 1)
    _, ref2d, shapes2d = attn.squeeze(torch.zeros(1, X * Y * Z, 8, dtype=torch.float64), ref,
                                      torch.tensor([[X, Y, Z]]))
    expected_row = (idx[..., 0] * Z + idx[..., 2] + 0.5) / (X * Z)
    torch.testing.assert_close(ref2d[..., 1], expected_row)
    assert shapes2d.tolist() == [[X * Z, Y]]
