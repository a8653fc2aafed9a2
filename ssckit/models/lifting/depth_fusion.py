"""BRGScene depth fusion (BRI + DVE, official ``volume_interaction``): mutual non-local attention between the LSS
and the stereo depth distributions, then a 3D hourglass, a residual channel attention and a softmax over depth.

Attention (official ``attention.attention``; q and kv are (B, C, D, H, W) volumes, C = 1 in VLScene):
    conf[j]  = max_d softmax_d(q)[d, j]                         (confidence of the *query* volume at pixel j)
    A[i, j]  = softmax_j( sum_{c,d} q'[cd, i] k'[cd, j] )        q' = query_conv(q), k' = key_conv(kv), no scaling
    out[:, i] = sum_j A[i, j] * conf[j] * v'[:, j]               v' = value_conv(kv)
    result   = gamma * out + kv                                  (gamma init 0)
The confidence multiplies the attention per *key* pixel j, so it is folded into the values and the whole thing is
one ``scaled_dot_product_attention(scale=1)`` call over the H*W pixels (no H*W x H*W matrix when a fused kernel
is available).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.models.lifting.depth_net import apply_key_rules
from ssckit.models.lifting.stereo import Hourglass3d, official_hourglass_key


class ConfidenceCrossAttention(nn.Module):
    """Pixel-to-pixel attention with depth as the feature axis, keys weighted by the query's confidence.

    Single-channel volumes only (the official confidence broadcast is defined for C = 1).
    """

    def __init__(self):
        super().__init__()
        self.query_conv = nn.Conv3d(1, 1, 1)
        self.key_conv = nn.Conv3d(1, 1, 1)
        self.value_conv = nn.Conv3d(1, 1, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, q: Tensor, kv: Tensor) -> Tensor:
        """q, kv (B, 1, D, H, W) -> (B, 1, D, H, W)."""
        b, _, d, h, w = kv.shape
        conf = q.softmax(dim=2).amax(dim=2).reshape(b, h * w, 1)  # (B, HW, 1), per key pixel
        query = self.query_conv(q).reshape(b, d, h * w).transpose(1, 2)  # (B, HW, D)
        key = self.key_conv(kv).reshape(b, d, h * w).transpose(1, 2)  # (B, HW, D)
        value = self.value_conv(kv).reshape(b, d, h * w).transpose(1, 2) * conf  # (B, HW, D)
        out = F.scaled_dot_product_attention(query[:, None], key[:, None], value[:, None], scale=1.0)[:, 0]
        out = out.transpose(1, 2).reshape(b, 1, d, h, w)  # (B, 1, D, H, W)
        return self.gamma * out + kv


class ChannelAttention3d(nn.Module):
    """Official ``CA3D``: 3^3 conv + GELU + GN(1), SE gate (C -> C/8 -> C, GELU after both, sigmoid), 3^3 conv +
    GELU + GN(1)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.conv_in = nn.Sequential(nn.Conv3d(channels, channels, 3, padding=1), nn.GELU(),
                                     nn.GroupNorm(1, channels))
        self.squeeze = nn.Sequential(nn.Conv3d(channels, channels // reduction, 1), nn.GELU(),
                                     nn.Conv3d(channels // reduction, channels, 1), nn.GELU())
        self.conv_out = nn.Sequential(nn.Conv3d(channels, channels, 3, padding=1), nn.GELU(),
                                      nn.GroupNorm(1, channels))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, D, H, W) -> same shape."""
        data = self.conv_in(x)
        gate = self.squeeze(data.mean(dim=(2, 3, 4), keepdim=True)).sigmoid()  # (B, C, 1, 1, 1)
        return self.conv_out(gate * data)


class VolumeInteraction(nn.Module):
    """Fuse P_st and P_lss (each (B, D, H, W), softmax over D) into the final depth distribution (B, D, H, W).

    D, H and W must be divisible by 4 (hourglass).
    """

    def __init__(self, channels: int = 32):
        super().__init__()
        self.lss_from_stereo = ConfidenceCrossAttention()  # official lss2stereo: q = stereo, kv = lss
        self.stereo_from_lss = ConfidenceCrossAttention()  # official stereo2lss: q = lss, kv = stereo
        self.fuse_in = nn.Conv3d(2, channels, 3, padding=1)
        self.hourglass = Hourglass3d(channels)
        self.channel_attention = ChannelAttention3d(channels)
        self.ca_alpha = nn.Parameter(torch.zeros(1))
        self.fuse_out = nn.Conv3d(channels, 1, 3, padding=1)

    def attend(self, stereo_prob: Tensor, lss_prob: Tensor) -> tuple[Tensor, Tensor]:
        """Both attentions: (lss volume guided by stereo, stereo volume guided by lss), each (B, 1, D, H, W)."""
        stereo, lss = stereo_prob.unsqueeze(1), lss_prob.unsqueeze(1)
        return self.lss_from_stereo(stereo, lss), self.stereo_from_lss(lss, stereo)

    def forward(self, stereo_prob: Tensor, lss_prob: Tensor) -> Tensor:
        """stereo_prob, lss_prob (B, D, H, W) -> fused depth probabilities (B, D, H, W)."""
        x = F.relu(self.fuse_in(torch.cat(self.attend(stereo_prob, lss_prob), dim=1)))  # (B, C, D, H, W)
        x = self.hourglass(x)
        x = x + self.ca_alpha * self.channel_attention(x)
        return F.relu(self.fuse_out(x)).squeeze(1).softmax(dim=1)


_FUSION_RULES: tuple[tuple[str, object], ...] = (
    (r"redir1\.(weight|bias)", r"fuse_in.\1"),
    (r"redir2\.(weight|bias)", r"fuse_out.\1"),
    (r"dres1\.(.+)", lambda m: f"hourglass.{official_hourglass_key(m.group(1))}"),
    (r"lss2stereo\.(.+)", r"lss_from_stereo.\1"),
    (r"stereo2lss\.(.+)", r"stereo_from_lss.\1"),
    (r"CA3D\.alpha", r"ca_alpha"),
    (r"CA3D\.fn\.conv1\.(.+)", r"channel_attention.conv_in.\1"),
    (r"CA3D\.fn\.conv2\.(.+)", r"channel_attention.squeeze.\1"),
    (r"CA3D\.fn\.conv\.(.+)", r"channel_attention.conv_out.\1"),
)


def official_fusion_key(key: str) -> str:
    """Official key relative to ``img_view_transformer.volume_interaction.`` -> :class:`VolumeInteraction` key."""
    return apply_key_rules(key, _FUSION_RULES, "volume_interaction")
