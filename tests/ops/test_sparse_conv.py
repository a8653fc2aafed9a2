"""Sparse 3-D convs: masked-dense backend against brute-force / hand-computed references, gradcheck, and
agreement with spconv (skipped when spconv is not importable)."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import functional_call

from ssckit.errors import SsckitError
from ssckit.ops.sparse_conv import (
    SparseConv3d,
    SparseInverseConv3d,
    SparseVoxels,
    SubMConv3d,
    resolve_sparse_backend,
    spconv_available,
)

needs_spconv = pytest.mark.skipif(not spconv_available(), reason="spconv not importable")


@pytest.fixture(autouse=True)
def _single_thread():
    """One intra-op thread: tiny convs are dominated by thread wake-ups otherwise, and spconv's multi-threaded
    CPU path is not deterministic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_sparse(seed: int, shape=(2, 4, 7, 6, 5), density: float = 0.3, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    return x * (torch.rand((shape[0], 1, *shape[2:]), generator=g) < density).to(dtype)


def _subm_reference(feats: torch.Tensor, coords: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Brute force: out[i] = sum over kernel taps t of W[t] @ x[i + t - centre] for active neighbours."""
    table = {tuple(c): i for i, c in enumerate(coords.tolist())}
    k0, k1, k2 = weight.shape[1:4]
    out = feats.new_zeros(feats.shape[0], weight.shape[0])
    for i, (b, x, y, z) in enumerate(coords.tolist()):
        for a, bb, cc in itertools.product(range(k0), range(k1), range(k2)):
            j = table.get((b, x + a - k0 // 2, y + bb - k1 // 2, z + cc - k2 // 2))
            if j is not None:
                out[i] += weight[:, a, bb, cc, :] @ feats[j]
    return out


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 1, 3), (3, 1, 1)])
def test_subm_matches_brute_force(kernel):
    x = SparseVoxels.from_dense(_random_sparse(0))
    conv = SubMConv3d(4, 5, kernel)
    with torch.no_grad():
        out = conv(x)
        ref = _subm_reference(x.features, x.indices, conv.weight)
    assert torch.equal(out.indices, x.indices)
    torch.testing.assert_close(out.features, ref, atol=1e-5, rtol=1e-5)


def test_from_dense_active_set_and_order():
    x = torch.zeros(2, 3, 4, 4, 4)
    x[1, 2, 3, 0, 1] = 2.0
    x[0, 0, 1, 2, 3] = -1.0
    x[0, 1, 0, 0, 0] = 0.5
    sv = SparseVoxels.from_dense(x)
    assert sv.indices.tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [1, 3, 0, 1]]
    assert sv.features.tolist() == [[0, 0.5, 0], [-1, 0, 0], [0, 0, 2]]
    assert torch.equal(sv.dense(), x)


def test_strided_and_inverse_hand_computed():
    # one active voxel at (2, 3, 4) in a 5x6x7 grid; kernel 3, stride 2, padding 1
    x = torch.zeros(1, 1, 5, 6, 7)
    x[0, 0, 2, 3, 4] = 1.0
    sv = SparseVoxels.from_dense(x)
    pool = SparseConv3d(1, 1, 3, 2, 1, indice_key="p")
    inv = SparseInverseConv3d(1, 1, 3, indice_key="p")
    with torch.no_grad():
        pool.weight.copy_(torch.arange(27.0).view(1, 3, 3, 3, 1))
        inv.weight.copy_(100 + torch.arange(27.0).view(1, 3, 3, 3, 1))
        y = pool(sv)
        # output q is hit by p = 2q - 1 + k: q = (1, 1, 2) with tap (1, 2, 1), q = (1, 2, 2) with tap (1, 0, 1)
        assert y.spatial_shape == (3, 3, 4)
        assert y.indices.tolist() == [[0, 1, 1, 2], [0, 1, 2, 2]]
        assert y.features.flatten().tolist() == [1 * 9 + 2 * 3 + 1, 1 * 9 + 0 * 3 + 1]
        z = inv(y.replace(torch.tensor([[1.0], [10.0]])))
    assert z.spatial_shape == (5, 6, 7)
    assert z.indices.tolist() == [[0, 2, 3, 4]]
    assert z.features.item() == 1.0 * (100 + 16) + 10.0 * (100 + 10)


def test_strided_active_set_is_dilation_of_input():
    x = SparseVoxels.from_dense(_random_sparse(1, density=0.1))
    y = SparseConv3d(4, 4, 3, 2, 1)(x)
    expected = set()
    for b, px, py, pz in x.indices.tolist():
        for qx, qy, qz in itertools.product(*[[(p + 1 - k) // 2 for k in range(3) if (p + 1 - k) % 2 == 0]
                                              for p in (px, py, pz)]):
            if 0 <= qx < 4 and 0 <= qy < 3 and 0 <= qz < 3:
                expected.add((b, qx, qy, qz))
    assert y.spatial_shape == (4, 3, 3)
    assert {tuple(r) for r in y.indices.tolist()} == expected


def test_rulebook_semantics_copied_vs_shared():
    """Two sibling convs under one key: copied dicts (spconv 2.x) keep each kernel; shared dicts (spconv 1.x)
    make the second run through the first one's (3,1,3) offsets, i.e. with its weight re-shaped."""
    dense = _random_sparse(2)
    first = SubMConv3d(4, 4, (3, 1, 3), indice_key="k")
    second = SubMConv3d(4, 4, (1, 3, 3), indice_key="k")
    with torch.no_grad():
        for shared in (False, True):
            x = SparseVoxels.from_dense(dense, shared_rules=shared)
            first(x)
            out = second(x).features
            w = second.weight.reshape(4, 3, 1, 3, 4) if shared else second.weight
            torch.testing.assert_close(out, _subm_reference(x.features, x.indices, w), atol=1e-5, rtol=1e-5)


def test_inverse_without_pool_raises():
    x = SparseVoxels.from_dense(_random_sparse(3))
    with pytest.raises(SsckitError):
        SparseInverseConv3d(4, 4, 3, indice_key="missing")(x)


def test_gradcheck_float64():
    x = SparseVoxels.from_dense(_random_sparse(4, shape=(1, 2, 4, 3, 3), density=0.5, dtype=torch.float64))
    subm = SubMConv3d(2, 2, (3, 1, 3), indice_key="s").double()
    pool = SparseConv3d(2, 2, 3, 2, 1, indice_key="p").double()
    inv = SparseInverseConv3d(2, 1, 3, indice_key="p").double()

    def run(feats, w_subm, w_pool, w_inv):
        y = functional_call(subm, {"weight": w_subm}, (SparseVoxels(feats, x.indices, x.spatial_shape, 1),))
        y = functional_call(pool, {"weight": w_pool}, (y,))
        return functional_call(inv, {"weight": w_inv}, (y,)).features

    params = [subm.weight, pool.weight, inv.weight]
    inputs = [x.features.clone().requires_grad_()] + [p.detach().clone().requires_grad_() for p in params]
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5)


def test_backend_resolution(monkeypatch):
    monkeypatch.setenv("SSCKIT_SPARSE_BACKEND", "dense")
    assert resolve_sparse_backend() == "dense"
    assert resolve_sparse_backend("dense") == "dense"
    with pytest.raises(SsckitError):
        resolve_sparse_backend("cuda-magic")
    monkeypatch.delenv("SSCKIT_SPARSE_BACKEND")
    assert resolve_sparse_backend() == ("spconv" if spconv_available() else "dense")


@needs_spconv
@pytest.mark.parametrize("shared", [False, True])
def test_dense_matches_spconv(shared):
    dense = _random_sparse(5)
    torch.manual_seed(0)
    convs = [SubMConv3d(4, 6, (1, 3, 3), "a"), SubMConv3d(6, 6, (3, 1, 3), "a"),
             SparseConv3d(6, 8, 3, 2, 1, indice_key="p"), SubMConv3d(8, 8, 3, "b"),
             SparseInverseConv3d(8, 5, 3, indice_key="p")]
    results = {}
    for backend in ("dense", "spconv"):
        y = SparseVoxels.from_dense(dense.clone().requires_grad_(), backend, shared_rules=shared)
        leaf = y.features
        for conv in convs:
            y = conv(y)
        grads = torch.autograd.grad(y.features.square().sum(), [leaf, convs[1].weight, convs[2].weight])
        results[backend] = (y.dense(), y.indices, grads)
    d, s = results["dense"], results["spconv"]
    assert torch.equal(d[1], s[1])
    torch.testing.assert_close(d[0], s[0], atol=1e-5, rtol=1e-5)
    for gd, gs in zip(d[2], s[2]):
        torch.testing.assert_close(gd, gs, atol=1e-4, rtol=1e-4)
