"""Camera-aware LSS depth/context net of VLScene (BEVDepth ``DepthNet`` with GroupNorm, ASPP and a DCNv1).

Data flow (official ``ViewTransformerLSSBEVDepth.DepthNet``; sizes are constructor arguments, official
128/128/128/112/30):

    cam (B, 30) -> GroupNorm(2)                                  (replaces BEVDepth's BN1d)
    x (B, C_in, H, W) -> 3x3 conv + GN(2) + ReLU = r             (shared)
    context = 1x1 conv(r * sigmoid(SE(MLP(cam))))                (B, C_ctx, H, W)  "img_feat"
    depth   = 3 BasicBlocks -> ASPP -> DCN 3x3 (groups 4) -> 1x1 (r * sigmoid(SE(MLP(cam))))  (B, D, H, W) logits
    output  = cat([depth logits, context], 1)                    (no softmax, as the official forward)

The camera gate (:class:`CameraGate`) and the mmdet ``BasicBlock`` are shared with the stereo reducer and the 2D
seg head. :func:`official_depthnet_key` maps the official ``img_view_transformer.depth_net.*`` names (prefix
removed) onto :class:`DepthNet`.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.ops.deform_conv import DeformConv2dPack

GN_GROUPS = 2  # official norm_cfg = GN(num_groups=2) in the depth net, the stereo branch and their ASPP pooling


class CameraGate(nn.Module):
    """BEVDepth camera awareness: ``x * sigmoid(expand(relu(reduce(MLP(cam)))))`` with a per-channel gate.

    ``mlp`` = Linear(cam -> C) -> ReLU -> Linear(C -> C); ``se`` = two 1x1 convs C -> C (names as the official
    ``Mlp`` (fc1/fc2) and ``SELayer`` (conv_reduce/conv_expand), held here under ``mlp.*`` and ``se.*``).
    """

    def __init__(self, cam_channels: int, channels: int):
        super().__init__()
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(cam_channels, channels))
        self.mlp.add_module("act", nn.ReLU())
        self.mlp.add_module("fc2", nn.Linear(channels, channels))
        self.se = nn.Sequential()
        self.se.add_module("conv_reduce", nn.Conv2d(channels, channels, 1))
        self.se.add_module("act", nn.ReLU())
        self.se.add_module("conv_expand", nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, cam: Tensor) -> Tensor:
        """x (B, C, H, W), cam (B, cam_channels) already normalised -> (B, C, H, W)."""
        gate = self.se(self.mlp(cam)[..., None, None])  # (B, C, 1, 1)
        return x * gate.sigmoid()


class BasicBlock(nn.Module):
    """mmdet ResNet ``BasicBlock`` without downsampling: relu(x + bn2(conv2(relu(bn1(conv1(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class ConvBNReLU(nn.Sequential):
    """Bias-free conv -> BN -> ReLU (the official ``_ASPPModule``: ``atrous_conv``, ``bn``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.add_module("atrous_conv", nn.Conv2d(in_channels, out_channels, kernel_size,
                                                 padding=dilation * (kernel_size // 2), dilation=dilation,
                                                 bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_channels))
        self.add_module("relu", nn.ReLU())


class ASPP(nn.Module):
    """BEVDepth ASPP: 1x1 + three dilated 3x3 (6/12/18) + image pooling (conv + GN(2)), fused by a 1x1 + BN + ReLU
    and dropout (0.5, active in training only)."""

    def __init__(self, in_channels: int, mid_channels: int, dilations: tuple[int, ...] = (1, 6, 12, 18),
                 dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(in_channels, mid_channels, 1 if d == 1 else 3, d)
                                       for d in dilations])
        self.pool_conv = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.pool_norm = nn.GroupNorm(GN_GROUPS, mid_channels)
        self.fuse = nn.Conv2d(mid_channels * (len(dilations) + 1), mid_channels, 1, bias=False)
        self.fuse_bn = nn.BatchNorm2d(mid_channels)
        self.dropout = nn.Dropout(dropout)
        for m in self.modules():  # official ASPP init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C_in, H, W) -> (B, C_mid, H, W)."""
        pooled = F.relu(self.pool_norm(self.pool_conv(x.mean(dim=(2, 3), keepdim=True))))  # (B, C_mid, 1, 1)
        # bilinear align_corners upsampling of a 1x1 map is a broadcast
        feats = [branch(x) for branch in self.branches] + [pooled.expand(-1, -1, *x.shape[2:])]
        return self.dropout(F.relu(self.fuse_bn(self.fuse(torch.cat(feats, dim=1)))))


class DepthNet(nn.Module):
    """Camera-aware depth (logits) + context net; see the module docstring for the data flow."""

    def __init__(self, in_channels: int, mid_channels: int, context_channels: int, depth_channels: int,
                 cam_channels: int = 30, dcn_groups: int = 4, aspp_dropout: float = 0.5):
        super().__init__()
        self.depth_channels = depth_channels
        self.context_channels = context_channels
        self.cam_norm = nn.GroupNorm(GN_GROUPS, cam_channels)
        self.reduce_conv = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1),
                                         nn.GroupNorm(GN_GROUPS, mid_channels), nn.ReLU())
        self.context_gate = CameraGate(cam_channels, mid_channels)
        self.context_conv = nn.Conv2d(mid_channels, context_channels, 1)
        self.depth_gate = CameraGate(cam_channels, mid_channels)
        self.depth_blocks = nn.Sequential(*[BasicBlock(mid_channels) for _ in range(3)])
        self.aspp = ASPP(mid_channels, mid_channels, dropout=aspp_dropout)
        self.dcn = DeformConv2dPack(mid_channels, mid_channels, 3, padding=1, groups=dcn_groups)
        self.depth_head = nn.Conv2d(mid_channels, depth_channels, 1)

    def forward(self, x: Tensor, cam: Tensor) -> Tensor:
        """x (B, C_in, H, W), cam (B, cam_channels) raw camera vector -> (B, D + C_ctx, H, W) = [logits, context]."""
        cam = self.cam_norm(cam.reshape(-1, cam.shape[-1]))  # (B, cam)
        x = self.reduce_conv(x)
        context = self.context_conv(self.context_gate(x, cam))
        depth = self.depth_blocks(self.depth_gate(x, cam))
        depth = self.depth_head(self.dcn(self.aspp(depth)))
        return torch.cat([depth, context], dim=1)


# (official regex, ssckit template) for keys relative to ``img_view_transformer.depth_net.``; first match wins.
_DEPTHNET_RULES: tuple[tuple[str, object], ...] = (
    (r"bn\.(weight|bias)", r"cam_norm.\1"),
    (r"reduce_conv\.([01])\.(.+)", r"reduce_conv.\1.\2"),
    (r"context_conv\.(.+)", r"context_conv.\1"),
    (r"(depth|context)_mlp\.(fc[12]\..+)", r"\1_gate.mlp.\2"),
    (r"(depth|context)_se\.(conv_(?:reduce|expand)\..+)", r"\1_gate.se.\2"),
    (r"depth_conv\.([012])\.(.+)", r"depth_blocks.\1.\2"),
    (r"depth_conv\.3\.aspp([1-4])\.(.+)", lambda m: f"aspp.branches.{int(m.group(1)) - 1}.{m.group(2)}"),
    (r"depth_conv\.3\.global_avg_pool\.1\.(.+)", r"aspp.pool_conv.\1"),
    (r"depth_conv\.3\.global_avg_pool\.2\.(.+)", r"aspp.pool_norm.\1"),
    (r"depth_conv\.3\.conv1\.(.+)", r"aspp.fuse.\1"),
    (r"depth_conv\.3\.bn1\.(.+)", r"aspp.fuse_bn.\1"),
    (r"depth_conv\.4\.(.+)", r"dcn.\1"),
    (r"depth_conv\.5\.(.+)", r"depth_head.\1"),
)


def apply_key_rules(key: str, rules: tuple, what: str) -> str:
    """First full-match rule rewrites ``key``; KeyError when none matches (so converters fail loudly)."""
    for pattern, repl in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    raise KeyError(f"no ssckit mapping for official {what} key {key!r}")


def official_depthnet_key(key: str) -> str:
    """Official ``depth_net.*`` key (without the ``img_view_transformer.depth_net.`` prefix) -> DepthNet key."""
    return apply_key_rules(key, _DEPTHNET_RULES, "depth_net")
