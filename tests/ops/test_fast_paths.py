"""CPU fast paths against their PyTorch references: float64 agreement, gradcheck, and the automatic selection.

References: ``ms_deform_attn_torch`` (grid_sample) for the embedding-bag MSDA and the late value projection,
``F.conv_transpose3d`` for the phased transposed conv, the modules as built (training-mode code path with the
norms switched to eval) for the SSC head and ASPP, ``F.linear`` + activation for the fused linear,
``nn.MultiheadAttention`` for the inference attention.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssckit.models.heads.ssc_head import SSCHead
from ssckit.models.layers.aspp import ASPP3D
from ssckit.models.layers.bn_fold import fold_batchnorm, foldable_batchnorm
from ssckit.models.layers.token_select import TokenSelection, scatter_selected_tokens
from ssckit.models.layers.transformer import TransformerLayer
from ssckit.ops import msda_bag
from ssckit.ops.conv_transpose import axis_phases, conv_transpose3d_phased
from ssckit.ops.linear import linear, linear_path
from ssckit.ops.msda import MultiScaleDeformableAttention, ms_deform_attn, ms_deform_attn_torch
from ssckit.ops.msda_bag import ms_deform_attn_bag, ms_deform_attn_project_late

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine every parallel region can wait a
    whole scheduler slice for a preempted worker (a gradcheck then takes a minute instead of a second)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _msda_case(dtype=F64, b=2, nq=7, nh=3, d=4, shapes=((3, 4), (2, 5), (1, 1)), npts=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    nv = sum(h * w for h, w in shapes)
    value = torch.randn(b, nv, nh, d, generator=g, dtype=dtype)
    loc = torch.rand(b, nq, nh, len(shapes), npts, 2, generator=g, dtype=dtype) * 1.8 - 0.4  # many outside
    attw = torch.rand(b, nq, nh, len(shapes), npts, generator=g, dtype=dtype)
    return value, torch.tensor(shapes), loc, attw


def _perturb_bn(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


# ------------------------------------------------------------------ MSDA


@pytest.mark.parametrize("chunk", [1 << 20, 40])  # 40 samples: several query chunks of one query each
def test_msda_bag_matches_reference_float64(monkeypatch, chunk):
    monkeypatch.setattr(msda_bag, "CHUNK_SAMPLES", chunk)
    value, shapes, loc, attw = _msda_case()
    loc[0, 0, 0, 0, 0] = torch.tensor([0.5 / 4, 2.5 / 3], dtype=F64)  # a pixel centre and the exact map edges
    loc[0, 1, 0, 0, :] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]], dtype=F64)
    want = ms_deform_attn_torch(value, shapes, loc, attw)
    torch.testing.assert_close(ms_deform_attn_bag(value, shapes, loc, attw), want, rtol=1e-12, atol=1e-12)


def test_msda_bag_float32_and_auto_selection():
    value, shapes, loc, attw = (t.float() for t in _msda_case())
    bag = ms_deform_attn_bag(value, shapes.clone(), loc, attw)
    torch.testing.assert_close(bag, ms_deform_attn_torch(value, shapes, loc, attw), rtol=0, atol=1e-5)
    assert torch.equal(ms_deform_attn(value, shapes, loc, attw), bag)  # default "auto" = bag on CPU
    assert ms_deform_attn_bag(value, shapes, loc[:, :0], attw[:, :0]).shape == (2, 0, 12)


def test_msda_bag_gradcheck():
    value, shapes, loc, attw = _msda_case(b=1, nq=3, nh=2, d=2, shapes=((2, 3), (2, 2)), npts=2, seed=1)
    loc = loc.clamp(0.05, 0.95)  # away from the border kinks (grid_sample's are the same)
    inputs = (value.requires_grad_(), loc.requires_grad_(), attw.requires_grad_())
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn_bag(v, shapes, l, a), inputs, eps=1e-6,
                                    atol=1e-6)


def _late_case(seed=2):
    g = torch.Generator().manual_seed(seed)
    _, shapes, loc, attw = _msda_case(seed=seed)
    raw = torch.randn(2, 23, 5, generator=g, dtype=F64)
    weight, bias = torch.randn(12, 5, generator=g, dtype=F64), torch.randn(12, generator=g, dtype=F64)
    mask = torch.rand(2, 23, generator=g) < 0.3
    return raw, shapes, loc, attw, weight, bias, mask


def test_msda_late_projection_matches_reference_float64():
    raw, shapes, loc, attw, weight, bias, mask = _late_case()
    for m in (None, mask):
        v = raw @ weight.T + bias
        if m is not None:
            v = v.masked_fill(m[..., None], 0.0)
        want = ms_deform_attn_torch(v.view(2, 23, 3, 4), shapes, loc, attw)
        got = ms_deform_attn_project_late(raw, shapes, loc, attw, weight, bias, m)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_msda_late_projection_gradcheck():
    raw, shapes, loc, attw, weight, bias, _ = _late_case(seed=3)
    args = (raw[:1].clone().requires_grad_(), loc[:1, :2].clamp(0.05, 0.95).requires_grad_(),
            attw[:1, :2].clone().requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(lambda r, l, a, w, b: ms_deform_attn_project_late(r, shapes, l, a, w, b), args,
                                    eps=1e-6, atol=1e-6)


def test_msda_module_paths_match_reference_backend(monkeypatch):
    torch.manual_seed(0)
    m = MultiScaleDeformableAttention(16, 2, 2, 2).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    shapes = torch.tensor([[6, 8], [3, 4]])
    value, ref = torch.randn(2, 60, 16, dtype=F64), torch.rand(2, 3, 2, 2, dtype=F64)
    queries = {"late": torch.randn(2, 3, 16, dtype=F64), "early": torch.randn(2, 40, 16, dtype=F64)}
    for path, q in queries.items():
        r = ref.repeat(1, q.shape[1] // 3 + 1, 1, 1)[:, :q.shape[1]]
        assert m.value_projection_path(value, q.shape[1]) == path
        got = m(q, value, r, shapes)
        monkeypatch.setenv("SSCKIT_MSDA_BACKEND", "torch")  # forces the early projection + grid_sample
        assert m.value_projection_path(value, q.shape[1]) == "early"
        want = m(q, value, r, shapes)
        monkeypatch.delenv("SSCKIT_MSDA_BACKEND")
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ transposed conv


@pytest.mark.parametrize("kernel,stride,padding,out_pad", [
    ((3, 3, 3), (1, 1, 2), (1, 1, 1), (0, 0, 1)),  # the head's z upsampling
    ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1)),  # the head's xyz upsampling
    ((4, 3, 2), (2, 3, 1), (1, 0, 0), (0, 2, 0)),
    ((5, 2, 3), (3, 2, 1), (2, 0, 1), (1, 1, 0)),
])
def test_conv_transpose3d_phased_matches_reference_float64(kernel, stride, padding, out_pad):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, 3, generator=g, dtype=F64)
    w, b = torch.randn(3, 4, *kernel, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    want = F.conv_transpose3d(x, w, b, stride, padding, out_pad)
    torch.testing.assert_close(conv_transpose3d_phased(x, w, b, stride, padding, out_pad), want, rtol=1e-12,
                               atol=1e-12)
    cl = conv_transpose3d_phased(x.contiguous(memory_format=torch.channels_last_3d), w, None, stride, padding,
                                 out_pad, epilogue=torch.tanh)
    assert cl.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(cl, torch.tanh(want - b.view(1, -1, 1, 1, 1)), rtol=1e-12, atol=1e-12)


def test_axis_phases_hand_computed():
    # k3, stride 2, padding 1, output padding 1: even outputs take tap 1 of x[m]; odd ones taps 2, 0 of x[m], x[m+1]
    n_out, (even, odd) = axis_phases(4, 3, 2, 1, 1)
    assert n_out == 8
    assert even.taps == (1,) and (even.padding, even.crop, even.size) == (0, 0, 4)
    assert odd.taps == (2, 0) and (odd.padding, odd.crop, odd.size) == (1, 1, 4)


def test_conv_transpose3d_phased_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 3, 2, 3, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, 3, generator=g, dtype=F64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: conv_transpose3d_phased(x, w, b, (2, 1, 2), (1, 1, 1), (1, 0, 1)), (x, w, b))


# ------------------------------------------------------------------ head, ASPP, BN folding


def test_fold_batchnorm_equals_conv_then_norm():
    torch.manual_seed(0)
    conv, bn = nn.Conv3d(3, 4, 3, padding=1).double(), nn.BatchNorm3d(4).double().eval()
    _perturb_bn(bn)
    assert foldable_batchnorm(bn) and not foldable_batchnorm(bn.train())
    bn.eval()
    x = torch.randn(2, 3, 4, 3, 5, dtype=F64)
    w, b = fold_batchnorm(conv.weight, conv.bias, bn)
    torch.testing.assert_close(F.conv3d(x, w, b, padding=1), bn(conv(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("z_up,xyz_up", [(2, True), (1, True), (2, False)])
def test_ssc_head_phased_matches_reference_float64(z_up, xyz_up):
    torch.manual_seed(0)
    head = SSCHead(6, 5, z_upsample=z_up, xyz_upsample=xyz_up).double()
    _perturb_bn(head)
    x = torch.randn(2, 6, 4, 3, 2, dtype=F64)
    head.train()
    assert head.path(x) == "reference"
    head.eval()
    assert head.path(x) == "phased"
    got = head(x)
    want = head.classifier(nn.Sequential(*[b for b in (head.z_up, head.xyz_up) if b is not None])(x))
    assert got.shape == (2, 5, 4 * (1 + xyz_up), 3 * (1 + xyz_up), 2 * z_up * (1 + xyz_up))
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_ssc_head_phased_gradcheck():
    torch.manual_seed(1)
    head = SSCHead(2, 2, z_upsample=2).double().eval()
    _perturb_bn(head, seed=1)
    x = torch.randn(1, 2, 2, 2, 1, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(head, (x,))


def test_aspp_folded_matches_reference_float64():
    torch.manual_seed(0)
    aspp = ASPP3D(4, (1, 2)).double()
    _perturb_bn(aspp)
    x = torch.randn(2, 4, 5, 4, 3, dtype=F64).contiguous(memory_format=torch.channels_last_3d)
    assert aspp.path() == "reference"
    aspp.eval()
    want = F.relu(x + sum(blk(x) for blk in aspp.blks))  # the modules as built, norms in eval mode
    assert aspp.path() == "folded"
    torch.testing.assert_close(aspp(x), want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ linear, attention, token scatter


@pytest.mark.parametrize("activation", ["none", "relu", "gelu"])
def test_fused_linear_matches_reference(activation):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 20, 16, generator=g), torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    res = torch.randn(3, 20, 24, generator=g)
    act = {"none": lambda t: t, "relu": F.relu, "gelu": F.gelu}[activation]
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b, activation), act(F.linear(x, w, b)), rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(linear(x.transpose(0, 1), w, None, activation, res.transpose(0, 1)),
                                   act(F.linear(x.transpose(0, 1), w)) + res.transpose(0, 1), rtol=1e-6, atol=1e-5)
    assert linear_path(x.double(), w.double()) == "reference"
    assert linear_path(x, w.requires_grad_()) == "reference"  # autograd needed -> F.linear
    with torch.no_grad():
        assert linear_path(x, w) in ("onednn", "reference")


def test_flop_counter_counts_fused_linear():
    from torch.utils.flop_counter import FlopCounterMode

    x, w, res = torch.randn(3, 7, 16), torch.randn(24, 16), torch.randn(3, 7, 24)
    with torch.no_grad():
        linear(x, w)  # warm the availability probe outside the counter
        with FlopCounterMode(display=False) as counter:
            linear(x, w, None, "gelu")
            linear(x, w, torch.zeros(24), residual=res)
    assert counter.get_total_flops() == 2 * (2 * 21 * 16 * 24)  # whichever path ran


def test_transformer_layer_inference_attention_matches_module():
    torch.manual_seed(0)
    layer = TransformerLayer(16, 4, mlp_ratio=2).double()
    q, kv = torch.randn(2, 9, 16, dtype=F64), torch.randn(2, 5, 16, dtype=F64)
    pos, mask = torch.randn(2, 9, 16, dtype=F64), torch.tensor([[False] * 5, [False, True, False, True, False]])
    layer.train()  # reference: nn.MultiheadAttention (no dropout in these layers)
    want = layer(q, kv, kv, query_pos=pos, key_padding_mask=mask)
    layer.eval()
    torch.testing.assert_close(layer(q, kv, kv, query_pos=pos, key_padding_mask=mask), want, rtol=1e-12,
                               atol=1e-12)


def test_scatter_selected_tokens_padding_and_all_valid():
    x = torch.arange(12, dtype=F64).view(2, 3, 2)
    upd = -torch.ones(2, 2, 2, dtype=F64)
    sel = TokenSelection(torch.tensor([[2, 0], [1, 0]]), torch.tensor([[True, True], [True, False]]))
    out = scatter_selected_tokens(x, upd, sel)
    want = x.clone()
    want[0, 2] = want[0, 0] = want[1, 1] = -1.0  # sample 1's padding slot (token 0) keeps its value
    assert torch.equal(out, want)
