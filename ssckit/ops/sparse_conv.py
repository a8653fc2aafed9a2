"""Sparse 3-D convolutions (submanifold, strided, inverse) with two interchangeable backends.

- ``"dense"`` (pure PyTorch, the reference): the active features are scattered into a dense grid, convolved with
  ``conv3d`` / ``conv_transpose3d`` and gathered back at the output active set. A submanifold conv keeps the
  active set; a strided conv activates every output site whose receptive field holds an active input (spconv's
  rule, computed with ``max_pool3d`` of the active mask); an inverse conv restores the active set recorded by the
  strided conv that shares its ``indice_key``.
- ``"spconv"`` (optional): spconv 2.x native rulebooks (``ops.get_indice_pairs``) and its gather-GEMM-scatter
  functions. Used automatically when ``import spconv.pytorch`` works; ``SSCKIT_SPARSE_BACKEND=dense|spconv``
  overrides the choice.

Conventions: ``indices`` (N, 4) int32 rows (b, x, y, z); ``spatial_shape`` (X, Y, Z); ``features`` (N, C);
dense grids are (B, C, X, Y, Z). Weights use the spconv 2.x layout (out, k0, k1, k2, in), kernel axes following
(x, y, z), so official checkpoints load unchanged.

Rulebooks are looked up by ``indice_key`` in a dict carried by the tensor, with either of spconv's semantics:
- copied (``shared_rules=False``, spconv 2.x, the default): every conv output gets a copy of its input's dict
  plus its own new entry, so sibling branches that start from the same tensor never see each other's rulebooks;
- shared (``shared_rules=True``, spconv 1.x): one dict for everything derived from the input, so the first conv
  (in execution order) under a key defines that key's rulebook for all later convs.
A submanifold conv that finds a rulebook of a *different* kernel shape with the same kernel volume reuses it
(spconv 1.x behaviour; only reachable with shared rules in the official blocks): its weight, flattened to
kernel-volume order, is applied through the first conv's offsets, i.e. it acts as a conv of the first conv's kernel
shape with weight ``weight.reshape(out, *first_kernel, in)``.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.errors import SsckitError

ENV_BACKEND = "SSCKIT_SPARSE_BACKEND"
BACKENDS = ("dense", "spconv")
IntTriple = Union[int, Sequence[int]]


def _triple(v: IntTriple) -> tuple[int, int, int]:
    t = (v, v, v) if isinstance(v, int) else tuple(int(a) for a in v)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 ints, got {v!r}")
    return t  # type: ignore[return-value]


_SPCONV: Optional[dict[str, Any]] = None


def _load_spconv() -> Optional[dict[str, Any]]:
    """Import spconv once; on CPU-only torch, patch its CUDA stream lookup so that backward works."""
    global _SPCONV
    if _SPCONV is None:
        try:
            import spconv.pytorch  # noqa: F401
            import spconv.pytorch.cppcore as cppcore
            import spconv.pytorch.ops as ops
            from spconv.core import ConvAlgo
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            _SPCONV = {}
        else:
            if not torch.cuda.is_available():
                ops.get_current_stream = lambda: 0
                cppcore.get_current_stream = lambda: 0
            _SPCONV = {"ops": ops, "algo": ConvAlgo.Native}
    return _SPCONV or None


@contextlib.contextmanager
def _spconv_guard(t: Tensor) -> Iterator[None]:
    """spconv's multi-threaded CPU kernels race (2.3.8: errors of ~7 % of max|y| with 2 threads), so CPU calls
    run with one intra-op thread; CUDA calls are left alone."""
    if t.is_cuda or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _SpconvNativeConv(torch.autograd.Function):
    """spconv's native gather-GEMM-scatter conv (subm / regular / inverse), with both passes thread-guarded."""

    @staticmethod
    def forward(ctx, features: Tensor, weight: Tensor, pairs: Tensor, pair_num: Tensor, num_out: int,
                inverse: bool, subm: bool) -> Tensor:
        sp = _load_spconv()
        ctx.save_for_backward(features, weight, pairs, pair_num)
        ctx.flags = (inverse, subm)
        with _spconv_guard(features):
            return sp["ops"].indice_conv(features, weight, pairs, pair_num, num_out, inverse, subm,
                                         algo=sp["algo"])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        sp = _load_spconv()
        features, weight, pairs, pair_num = ctx.saved_tensors
        with _spconv_guard(features):
            g_in, g_w = sp["ops"].indice_conv_backward(features, weight, grad.contiguous(), pairs, pair_num,
                                                        *ctx.flags, algo=sp["algo"])
        return g_in, g_w, None, None, None, None, None


def _spconv_conv(features: Tensor, weight: Tensor, pairs: Tensor, pair_num: Tensor, num_out: int,
                 inverse: bool = False, subm: bool = False) -> Tensor:
    return _SpconvNativeConv.apply(features.contiguous(), weight.contiguous(), pairs, pair_num, num_out,
                                   inverse, subm)


def spconv_available() -> bool:
    """True when ``spconv.pytorch`` imports."""
    return _load_spconv() is not None


def resolve_sparse_backend(name: Optional[str] = None) -> str:
    """The backend to use: ``name``, else ``$SSCKIT_SPARSE_BACKEND``, else spconv when importable, else dense."""
    name = name or os.environ.get(ENV_BACKEND) or ("spconv" if spconv_available() else "dense")
    if name not in BACKENDS:
        raise SsckitError(f"unknown sparse backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name == "spconv" and not spconv_available():
        raise SsckitError("sparse backend 'spconv' requested but `import spconv.pytorch` fails")
    return name


@dataclass
class SubmRule:
    """Rulebook of a submanifold conv: its kernel shape and active set size (+ spconv pairs)."""
    kernel_size: tuple[int, int, int]
    spatial_shape: tuple[int, int, int]
    num_active: int
    pairs: Optional[Tensor] = None
    pair_num: Optional[Tensor] = None


@dataclass
class PoolRule:
    """Rulebook of a strided conv, kept for its inverse: the input active set and geometry (+ spconv pairs)."""
    kernel_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    in_indices: Tensor
    in_shape: tuple[int, int, int]
    pairs: Optional[Tensor] = None
    pair_num: Optional[Tensor] = None


class SparseVoxels:
    """Active voxel features of a batch: ``features`` (N, C) at ``indices`` (N, 4) int32 (b, x, y, z)."""

    def __init__(self, features: Tensor, indices: Tensor, spatial_shape: Sequence[int], batch_size: int,
                 backend: str = "dense", rules: Optional[dict[str, Union[SubmRule, PoolRule]]] = None,
                 shared_rules: bool = False):
        if backend not in BACKENDS:
            raise SsckitError(f"unknown sparse backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.features = features
        self.indices = indices.to(torch.int32).contiguous()  # spconv reads the raw buffer
        self.spatial_shape = _triple(spatial_shape)
        self.batch_size = int(batch_size)
        self.backend = backend
        self.rules = {} if rules is None else rules
        self.shared_rules = shared_rules
        self._flat: Optional[Tensor] = None

    @classmethod
    def from_dense(cls, x: Tensor, backend: str = "dense", shared_rules: bool = False) -> "SparseVoxels":
        """Every voxel of x (B, C, X, Y, Z) with a non-zero channel becomes active, in (b, x, y, z) order."""
        active = x.ne(0).any(dim=1)  # (B, X, Y, Z)
        indices = active.nonzero().to(torch.int32)
        feats = x.permute(0, 2, 3, 4, 1)[active]  # (N, C)
        return cls(feats, indices, x.shape[2:], x.shape[0], backend, shared_rules=shared_rules)

    def replace(self, features: Tensor, indices: Optional[Tensor] = None,
                spatial_shape: Optional[Sequence[int]] = None,
                rules: Optional[dict[str, Union[SubmRule, PoolRule]]] = None) -> "SparseVoxels":
        """A tensor with new features (optionally a new active set / rulebook dict); shares the dict by default."""
        out = SparseVoxels(features, self.indices if indices is None else indices,
                           self.spatial_shape if spatial_shape is None else spatial_shape,
                           self.batch_size, self.backend, self.rules if rules is None else rules,
                           self.shared_rules)
        if indices is None:
            out._flat = self._flat
        return out

    def map(self, fn: Callable[[Tensor], Tensor]) -> "SparseVoxels":
        """Apply a per-voxel function (norm, activation) to the (N, C) active features."""
        return self.replace(fn(self.features))

    @property
    def flat_index(self) -> Tensor:
        """(N,) long index into the flattened (B, X, Y, Z) grid."""
        if self._flat is None:
            self._flat = flat_index(self.indices, self.spatial_shape)
        return self._flat

    def to_grid(self) -> Tensor:
        """Dense (B, C, X, Y, Z) tensor, zero off the active set (a channels-last view)."""
        n_vox = self.batch_size * math.prod(self.spatial_shape)
        c = self.features.shape[1]
        flat = self.features.new_zeros(n_vox, c).index_copy(0, self.flat_index, self.features)
        return flat.view(self.batch_size, *self.spatial_shape, c).permute(0, 4, 1, 2, 3)

    def output_rules(self) -> dict[str, Union[SubmRule, PoolRule]]:
        """The dict a conv output carries: this one (shared semantics) or a copy (spconv 2.x semantics)."""
        return self.rules if self.shared_rules else dict(self.rules)

    def dense(self) -> Tensor:
        """Contiguous dense (B, C, X, Y, Z) tensor, zero off the active set."""
        return self.to_grid().contiguous()


def flat_index(indices: Tensor, spatial_shape: Sequence[int]) -> Tensor:
    """(N,) long flat index b*XYZ + x*YZ + y*Z + z of (N, 4) (b, x, y, z) indices."""
    _, sy, sz = spatial_shape
    idx = indices.long()
    return ((idx[:, 0] * spatial_shape[0] + idx[:, 1]) * sy + idx[:, 2]) * sz + idx[:, 3]


def _gather_grid(grid: Tensor, flat: Tensor) -> Tensor:
    """Features (N, C) of a (B, C, X, Y, Z) grid at flat voxel indices."""
    return grid.permute(0, 2, 3, 4, 1).reshape(-1, grid.shape[1]).index_select(0, flat)


class _SparseConvBase(nn.Module):
    """Holds a weight in spconv 2.x layout (out, k0, k1, k2, in) and spconv's default init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntTriple, indice_key: Optional[str],
                 bias: bool):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _triple(kernel_size)
        self.indice_key = indice_key
        self.weight = nn.Parameter(torch.empty(out_channels, *self.kernel_size, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # fan_in = kv * in for this layout
        if self.bias is not None:
            bound = 1.0 / math.sqrt(math.prod(self.kernel_size) * self.in_channels)
            nn.init.uniform_(self.bias, -bound, bound)

    def _torch_weight(self, kernel: Sequence[int]) -> Tensor:
        """Weight as a conv3d kernel (out, in, *kernel); ``kernel`` may re-shape it (rulebook reuse)."""
        return self.weight.reshape(self.out_channels, *kernel, self.in_channels).permute(0, 4, 1, 2, 3)

    def _add_bias(self, feats: Tensor) -> Tensor:
        return feats if self.bias is None else feats + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"indice_key={self.indice_key!r}, bias={self.bias is not None}")


class SubMConv3d(_SparseConvBase):
    """Submanifold conv (odd kernel, stride 1, centred): outputs only at the input's active sites."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntTriple = 3,
                 indice_key: Optional[str] = None, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, indice_key, bias)
        if any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"submanifold conv needs odd kernel sizes, got {self.kernel_size}")

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        rules = x.output_rules()
        rule = x.rules.get(self.indice_key) if self.indice_key is not None else None
        if rule is None:
            rule = SubmRule(self.kernel_size, x.spatial_shape, x.indices.shape[0])
            if self.indice_key is not None:
                rules[self.indice_key] = rule
        elif not isinstance(rule, SubmRule):
            raise SsckitError(f"indice_key {self.indice_key!r} belongs to a strided conv, not a subm conv")
        elif math.prod(rule.kernel_size) != math.prod(self.kernel_size):
            raise SsckitError(f"indice_key {self.indice_key!r}: kernel {self.kernel_size} cannot reuse the "
                              f"rulebook of kernel {rule.kernel_size}")
        elif (rule.spatial_shape, rule.num_active) != (x.spatial_shape, x.indices.shape[0]):
            raise SsckitError(f"indice_key {self.indice_key!r} is reused on a different active set")
        if x.backend == "dense":
            pad = tuple(k // 2 for k in rule.kernel_size)
            out = F.conv3d(x.to_grid(), self._torch_weight(rule.kernel_size), padding=pad)
            feats = _gather_grid(out, x.flat_index)
        else:
            sp = _load_spconv()
            with _spconv_guard(x.features):
                if rule.pairs is None:
                    ks = list(rule.kernel_size)
                    _, rule.pairs, rule.pair_num = sp["ops"].get_indice_pairs(
                        x.indices, x.batch_size, list(x.spatial_shape), sp["algo"], ks, [1, 1, 1],
                        [k // 2 for k in ks], [1, 1, 1], [0, 0, 0], True, False)
            w = self.weight.reshape(self.out_channels, *rule.kernel_size, self.in_channels)
            feats = _spconv_conv(x.features, w, rule.pairs, rule.pair_num, x.features.shape[0], subm=True)
        return x.replace(self._add_bias(feats), rules=rules)


class SparseConv3d(_SparseConvBase):
    """Strided sparse conv: an output site is active when its receptive field holds an active input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntTriple = 3, stride: IntTriple = 2,
                 padding: IntTriple = 1, indice_key: Optional[str] = None, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, indice_key, bias)
        self.stride = _triple(stride)
        self.padding = _triple(padding)

    def output_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        return tuple((s + 2 * p - k) // st + 1  # type: ignore[return-value]
                     for s, k, st, p in zip(shape, self.kernel_size, self.stride, self.padding))

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        out_shape = self.output_shape(x.spatial_shape)
        rule = PoolRule(self.kernel_size, self.stride, self.padding, x.indices, x.spatial_shape)
        if x.backend == "dense":
            mask = x.features.new_zeros(x.batch_size * math.prod(x.spatial_shape))
            mask = mask.index_fill(0, x.flat_index, 1.0).view(x.batch_size, 1, *x.spatial_shape)
            out_mask = F.max_pool3d(mask, self.kernel_size, self.stride, self.padding)[:, 0] > 0  # (B, X', Y', Z')
            out_indices = out_mask.nonzero().to(torch.int32)
            grid = F.conv3d(x.to_grid(), self._torch_weight(self.kernel_size), stride=self.stride,
                            padding=self.padding)
            feats = _gather_grid(grid, flat_index(out_indices, out_shape))
        else:
            sp = _load_spconv()
            with _spconv_guard(x.features):
                out_indices, rule.pairs, rule.pair_num = sp["ops"].get_indice_pairs(
                    x.indices, x.batch_size, list(x.spatial_shape), sp["algo"], list(self.kernel_size),
                    list(self.stride), list(self.padding), [1, 1, 1], [0, 0, 0], False, False)
            feats = _spconv_conv(x.features, self.weight, rule.pairs, rule.pair_num, out_indices.shape[0])
        rules = x.output_rules()
        if self.indice_key is not None:
            rules[self.indice_key] = rule
        return x.replace(self._add_bias(feats), indices=out_indices, spatial_shape=out_shape, rules=rules)


class SparseInverseConv3d(_SparseConvBase):
    """Inverse of the strided conv sharing ``indice_key``: maps back onto that conv's input active set."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntTriple = 3, indice_key: str = "",
                 bias: bool = False):
        if not indice_key:
            raise ValueError("an inverse conv needs the indice_key of its strided conv")
        super().__init__(in_channels, out_channels, kernel_size, indice_key, bias)

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        rule = x.rules.get(self.indice_key)  # type: ignore[arg-type]
        if not isinstance(rule, PoolRule):
            raise SsckitError(f"no strided conv recorded under indice_key {self.indice_key!r}")
        if rule.kernel_size != self.kernel_size:
            raise SsckitError(f"inverse conv kernel {self.kernel_size} != strided conv kernel {rule.kernel_size}")
        if x.backend == "dense":
            out_pad = tuple(s - ((o - 1) * st - 2 * p + k) for s, o, st, p, k in
                            zip(rule.in_shape, x.spatial_shape, rule.stride, rule.padding, rule.kernel_size))
            w = self.weight.permute(4, 0, 1, 2, 3)  # (in, out, k0, k1, k2) for conv_transpose3d
            grid = F.conv_transpose3d(x.to_grid(), w, stride=rule.stride, padding=rule.padding,
                                      output_padding=out_pad)
            feats = _gather_grid(grid, flat_index(rule.in_indices, rule.in_shape))
        else:
            feats = _spconv_conv(x.features, self.weight, rule.pairs, rule.pair_num, rule.in_indices.shape[0],
                                 inverse=True)
        return x.replace(self._add_bias(feats), indices=rule.in_indices, spatial_shape=rule.in_shape,
                         rules=x.output_rules())
