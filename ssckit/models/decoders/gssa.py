"""VLScene GSSA (Geometric-Semantic Sparse Awareness, spec §2.6): dense NGP, then a sparse Cylinder3D-style UNet (SSI).

Input/output layout (B, C, X, Y, Z). Attribute names equal the official ones (``pre_conv``, ``downCntx``,
``resBlock2`` ...), and the sparse weights use spconv's (out, k0, k1, k2, in) layout, so the official
``sparse_unet.*`` keys load after stripping the prefix.

Official behaviour and the two flags that change inference outputs:
- ``reuse_indice_pairs`` (default False = official): the asymmetric blocks put convs of different kernel shapes
  under one ``indice_key``, but they sit on sibling branches, and spconv 2.x gives each conv output a *copy* of
  the indice dict, so every branch builds its own rulebook and no cross-shape reuse happens. The official oracle
  (spconv 2.3.8) matches this bit for bit. True emulates spconv 1.x (one shared dict): the later convs under a key
  run through the first conv's neighbour pairs with their weights re-shaped (in a block whose first conv is
  (3,1,3) the (1,3,3) convs act as (3,1,3) convs; in DDCM all three 1-D convs act along x).
- ``official_ddcm`` (default True = official, §7.6): branch 1 of the DDCM recon block passes through all three
  BN+sigmoid pairs and branches 2 and 3 are summed raw. False gives three independent BN+sigmoid branches.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ssckit.ops.sparse_conv import (
    IntTriple,
    SparseConv3d,
    SparseInverseConv3d,
    SparseVoxels,
    SubMConv3d,
    resolve_sparse_backend,
)


class NGPResidual(nn.Module):
    """Dense residual block [7³ conv, ReLU, 3³ conv, +x, ReLU]; no bias, no norm (official BasicBlock7x7)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 7, padding=3, bias=False)
        self.conv3 = nn.Conv3d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv3(torch.relu(self.conv1(x))) + x)


class AsymmetricResBlock(nn.Module):
    """Two SubM branches, (conv1, conv1_2) with ``first_kernel`` and (conv2, conv3) with ``second_kernel``, each
    conv followed by LeakyReLU then BN; summed. Optionally a 3³ stride-2 sparse pool (returns (pooled, pre-pool)).
    All four SubM convs share ``indice_key + "bef"``."""

    def __init__(self, in_channels: int, out_channels: int, first_kernel: IntTriple, second_kernel: IntTriple,
                 indice_key: str, pool: bool):
        super().__init__()
        key = indice_key + "bef"
        self.conv1 = SubMConv3d(in_channels, out_channels, first_kernel, key)
        self.bn0 = nn.BatchNorm1d(out_channels)
        self.conv1_2 = SubMConv3d(out_channels, out_channels, first_kernel, key)
        self.bn0_2 = nn.BatchNorm1d(out_channels)
        self.conv2 = SubMConv3d(in_channels, out_channels, second_kernel, key)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv3 = SubMConv3d(out_channels, out_channels, second_kernel, key)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.act = nn.LeakyReLU()
        self.pool = SparseConv3d(out_channels, out_channels, 3, 2, 1, indice_key=indice_key) if pool else None
        for bn in (self.bn0, self.bn0_2, self.bn1, self.bn2):
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)

    def forward(self, x: SparseVoxels) -> tuple[SparseVoxels, Optional[SparseVoxels]]:
        a = self.conv1(x).map(lambda f: self.bn0(self.act(f)))
        a = self.conv1_2(a).map(lambda f: self.bn0_2(self.act(f)))
        b = self.conv2(x).map(lambda f: self.bn1(self.act(f)))
        b = self.conv3(b).map(lambda f: self.bn2(self.act(f)))
        out = b.replace(b.features + a.features)
        return (self.pool(out), out) if self.pool is not None else (out, None)


class UpBlock(nn.Module):
    """SubM 3³ (key + "new_up") + LeakyReLU + BN, inverse conv tied to ``up_key``, + skip, 3× SubM (1,3,3)."""

    def __init__(self, in_channels: int, out_channels: int, indice_key: str, up_key: str):
        super().__init__()
        c = out_channels
        self.trans_dilao = SubMConv3d(in_channels, c, 3, indice_key + "new_up")
        self.trans_bn = nn.BatchNorm1d(c)
        self.conv1 = SubMConv3d(c, c, (1, 3, 3), indice_key)
        self.bn1 = nn.BatchNorm1d(c)
        self.conv2 = SubMConv3d(c, c, (1, 3, 3), indice_key)
        self.bn2 = nn.BatchNorm1d(c)
        self.conv3 = SubMConv3d(c, c, (1, 3, 3), indice_key)
        self.bn3 = nn.BatchNorm1d(c)
        self.up_subm = SparseInverseConv3d(c, c, 3, indice_key=up_key)
        self.act = nn.LeakyReLU()
        for bn in (self.trans_bn, self.bn1, self.bn2, self.bn3):
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)

    def forward(self, x: SparseVoxels, skip: SparseVoxels) -> SparseVoxels:
        up = self.up_subm(self.trans_dilao(x).map(lambda f: self.trans_bn(self.act(f))))
        up = up.replace(up.features + skip.features)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            up = conv(up).map(lambda f, bn=bn: bn(self.act(f)))
        return up


class ReconBlock(nn.Module):
    """DDCM: 1-D SubM convs (3,1,1), (1,3,1), (1,1,3) with BN + sigmoid, summed, times the input."""

    def __init__(self, channels: int, indice_key: str, official_ddcm: bool = True):
        super().__init__()
        key, c = indice_key + "bef", channels
        self.conv1 = SubMConv3d(c, c, (3, 1, 1), key)
        self.bn0 = nn.BatchNorm1d(c)
        self.conv1_2 = SubMConv3d(c, c, (1, 3, 1), key)
        self.bn0_2 = nn.BatchNorm1d(c)
        self.conv1_3 = SubMConv3d(c, c, (1, 1, 3), key)
        self.bn0_3 = nn.BatchNorm1d(c)
        self.official_ddcm = official_ddcm

    def forward(self, x: SparseVoxels) -> SparseVoxels:
        f1 = self.conv1(x).features
        f2 = self.conv1_2(x).features
        f3 = self.conv1_3(x).features
        if self.official_ddcm:
            g = torch.sigmoid(self.bn0(f1))
            g = torch.sigmoid(self.bn0_2(g))
            g = torch.sigmoid(self.bn0_3(g)) + f2 + f3
        else:
            g = torch.sigmoid(self.bn0(f1)) + torch.sigmoid(self.bn0_2(f2)) + torch.sigmoid(self.bn0_3(f3))
        return x.replace(g * x.features)


class GSSA(nn.Module):
    """NGP (dense 1×1×1 conv + ReLU + 7³/3³ residual) → sparse asymmetric UNet (SSI) → dense (B, 4*init, X, Y, Z).

    ``spatial_shape`` (X, Y, Z) of the input grid (official [128, 128, 16]); ``in_channels`` (official 128);
    ``init_size`` (official 64). ``sparse_backend`` None = ``resolve_sparse_backend()`` at call time.
    """

    def __init__(self, spatial_shape: Sequence[int], in_channels: int = 128, init_size: int = 64,
                 reuse_indice_pairs: bool = False, official_ddcm: bool = True,
                 sparse_backend: Optional[str] = None):
        super().__init__()
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.sparse_backend = sparse_backend
        self.reuse_indice_pairs = reuse_indice_pairs
        c = init_size
        self.pre_conv = nn.Sequential(nn.Conv3d(in_channels, c, 1, bias=False), nn.ReLU(), NGPResidual(c))
        self.downCntx = AsymmetricResBlock(c, c, (1, 3, 3), (3, 1, 3), "pre", pool=False)
        self.resBlock2 = AsymmetricResBlock(c, 2 * c, (3, 1, 3), (1, 3, 3), "down2", pool=True)
        self.resBlock3 = AsymmetricResBlock(2 * c, 4 * c, (3, 1, 3), (1, 3, 3), "down3", pool=True)
        self.upBlock2 = UpBlock(4 * c, 4 * c, "up2", up_key="down3")
        self.upBlock3 = UpBlock(4 * c, 2 * c, "up3", up_key="down2")
        self.ReconNet = ReconBlock(2 * c, "recon", official_ddcm=official_ddcm)
        self.out_channels = 4 * c

    def ngp(self, x: Tensor) -> Tensor:
        """Neighbourhood Geometry Propagation (dense)."""
        return self.pre_conv(x)

    def ssi(self, x: SparseVoxels) -> SparseVoxels:
        """Sparse Semantic Interaction on the active voxels; returns concat(recon, up-path) features."""
        x, _ = self.downCntx(x)
        down1c, down1b = self.resBlock2(x)
        down2c, down2b = self.resBlock3(down1c)
        up2 = self.upBlock2(down2c, down2b)
        up1 = self.upBlock3(up2, down1b)
        rec = self.ReconNet(up1)
        return rec.replace(torch.cat([rec.features, up1.features], dim=1))

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.spatial_shape:
            raise ValueError(f"GSSA expects a grid of {self.spatial_shape}, got {tuple(x.shape[2:])}")
        feats = self.ngp(x)
        sparse = SparseVoxels.from_dense(feats, resolve_sparse_backend(self.sparse_backend),
                                         shared_rules=self.reuse_indice_pairs)
        return self.ssi(sparse).dense()
