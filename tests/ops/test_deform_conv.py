"""DCNv1 (mmcv DeformConv2dPack semantics): conv2d equivalences, offset layout, gradcheck, the VLScene oracle."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssckit.ops import deform_conv as dc
from ssckit.ops.deform_conv import DeformConv2dPack, deform_conv2d, deform_conv2d_torch


def _offsets(b: int, dg: int, ho: int, wo: int, dy, dx, k: int = 3) -> torch.Tensor:
    """Offset field with per-tap (dy, dx) (callables of (ky, kx)) in the mmcv layout (2k = dy, 2k+1 = dx)."""
    off = torch.zeros(b, dg, k * k, 2, ho, wo)
    for ky in range(k):
        for kx in range(k):
            off[:, :, ky * k + kx, 0] = dy(ky, kx)
            off[:, :, ky * k + kx, 1] = dx(ky, kx)
    return off.view(b, dg * k * k * 2, ho, wo)


@pytest.mark.parametrize("stride,padding,dilation,groups,dg", [(1, 1, 1, 1, 1), (2, 1, 1, 2, 2), (1, 2, 2, 4, 1)])
def test_zero_offset_is_grouped_conv(stride, padding, dilation, groups, dg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 9, 11, generator=g)
    w = torch.randn(12, 8 // groups, 3, 3, generator=g)
    bias = torch.randn(12, generator=g)
    ref = F.conv2d(x, w, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    off = torch.zeros(2, 2 * dg * 9, *ref.shape[2:])
    out = deform_conv2d_torch(x, off, w, bias, stride, padding, dilation)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _shifted_conv(x: torch.Tensor, w: torch.Tensor, oy: float, ox: float) -> torch.Tensor:
    """3x3, pad-1 conv reading x at (p + (oy, ox)) with x zero-extended beyond its border."""
    m = 3
    h, wd = x.shape[-2:]
    xp = F.pad(x, (m, m, m, m))
    y0, x0 = m + int(oy) - 1, m + int(ox) - 1
    return F.conv2d(xp[..., y0:y0 + h + 2, x0:x0 + wd + 2], w)


def test_uniform_integer_offset_is_shifted_conv():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 7, 9, generator=g)
    w = torch.randn(6, 4, 3, 3, generator=g)
    off = _offsets(1, 1, 7, 9, lambda ky, kx: 1.0, lambda ky, kx: -2.0)
    torch.testing.assert_close(deform_conv2d_torch(x, off, w, None, 1, 1, 1), _shifted_conv(x, w, 1, -2),
                               atol=1e-5, rtol=1e-5)


def test_per_tap_offsets_follow_mmcv_layout():
    """dy = ky - 1 on every tap turns a 3x3/pad-1 DCN into a conv with dilation (2, 1): catches dy/dx swaps and
    a wrong tap order."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 10, generator=g)
    w = torch.randn(5, 4, 3, 3, generator=g)
    off = _offsets(2, 1, 8, 10, lambda ky, kx: float(ky - 1), lambda ky, kx: 0.0)
    ref = F.conv2d(x, w, padding=(2, 1), dilation=(2, 1))
    torch.testing.assert_close(deform_conv2d_torch(x, off, w, None, 1, 1, 1), ref, atol=1e-5, rtol=1e-5)
    off = _offsets(2, 1, 8, 10, lambda ky, kx: 0.0, lambda ky, kx: float(kx - 1))
    ref = F.conv2d(x, w, padding=(1, 2), dilation=(1, 2))
    torch.testing.assert_close(deform_conv2d_torch(x, off, w, None, 1, 1, 1), ref, atol=1e-5, rtol=1e-5)


def test_half_pixel_offset_averages_neighbours():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 5, 6, generator=g)
    w = torch.randn(3, 2, 3, 3, generator=g)
    off = _offsets(1, 1, 5, 6, lambda ky, kx: 0.0, lambda ky, kx: 0.5)
    ref = 0.5 * (_shifted_conv(x, w, 0, 0) + _shifted_conv(x, w, 0, 1))
    torch.testing.assert_close(deform_conv2d_torch(x, off, w, None, 1, 1, 1), ref, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    # fractional parts kept away from integers (bilinear kinks), some samples leave the image
    whole = torch.randint(-2, 2, (1, 2 * 2 * 9, 3, 4), generator=g).double()
    frac = 0.2 + 0.6 * torch.rand(1, 2 * 2 * 9, 3, 4, generator=g, dtype=torch.float64)
    off = (whole + frac).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: deform_conv2d_torch(*a, 1, 1, 1), (x, off, w, bias),
                                    fast_mode=True)


def test_module_init_and_names():
    m = DeformConv2dPack(8, 8, 3, padding=1, groups=4)
    assert set(m.state_dict()) == {"weight", "conv_offset.weight", "conv_offset.bias"}
    assert m.weight.shape == (8, 2, 3, 3) and m.conv_offset.weight.shape == (18, 8, 3, 3)
    assert not m.conv_offset.weight.any() and not m.conv_offset.bias.any()
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, padding=1, groups=4), atol=1e-5, rtol=1e-5)


def test_dispatch_matches_reference(monkeypatch):
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(1, 4, 6, 6, generator=g), torch.randn(4, 4, 3, 3, generator=g)
    off = torch.randn(1, 18, 6, 6, generator=g)
    ref = deform_conv2d_torch(x, off, w, None, 1, 1, 1)
    torch.testing.assert_close(deform_conv2d(x, off, w, None, 1, 1, 1), ref, atol=1e-4, rtol=1e-4)
    monkeypatch.setenv(dc.ENV_BACKEND, "pure")
    assert torch.equal(deform_conv2d(x, off, w, None, 1, 1, 1), ref)
    assert isinstance(dc._torchvision_works(x.device), bool)


def test_depthnet_dcn_oracle(oracle_dir):
    path = oracle_dir / "vlscene" / "vlscene_unit_oracles.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    entry = torch.load(path, weights_only=True)["depthnet"]
    case = entry["dcn"]
    prefix = case["key_prefix"]
    m = DeformConv2dPack(32, 32, 3, padding=1, groups=4)
    m.load_state_dict({k[len(prefix):]: v for k, v in entry["state_dict"].items() if k.startswith(prefix)})
    tol = 1e-5 * case["output"].abs().max().item()
    with torch.no_grad():
        torch.testing.assert_close(m.conv_offset(case["x"]), case["offset"], atol=tol, rtol=0)
        torch.testing.assert_close(deform_conv2d_torch(case["x"], case["offset"], m.weight, None, 1, 1, 1),
                                   case["output"], atol=tol, rtol=0)
        torch.testing.assert_close(m(case["x"]), case["output"], atol=tol, rtol=0)
