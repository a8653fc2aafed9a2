"""VLScene/BRGScene stereo branch: camera-aware reducer, group-wise correlation volume, disparity->depth
resampling and three PSMNet-style 3D hourglasses -> a stereo depth distribution P_st (B, D, H, W).

Official pieces (``ViewTransformerLSSVoxel.py``): ``stereofeature_net`` (3x3 conv + GN(2) + ReLU, camera gate from
each view's own *un-normalised* camera vector, 1x1 conv to 64), ``build_gwc_volume`` (GwcNet: 32 groups, disparities
0..max_disp-1; entry [g, d, h, w] = mean over the group's channels of ref[w] * tgt[w - d], 0 for w < d), ``warp``
(linear resampling along the disparity axis), ``hourglass`` (GN(2) convs, BN3d transposed convs) and
``GwcNet_volume_encoder``.

Disparity -> depth (``disparity_sampling``):
- ``"official"``: output index i = 1..max_disp reads disparity ``fx_baseline / (4 i)`` (= depth 0.5 i m at 1/8
  resolution), where the official loader passes ``fx_baseline`` = fx of the *original* P2 times the baseline. It
  ignores the LSS bins (2.0 + 0.5 k m: 3 bins apart) and the ~1.04 resize; kept as default because it changes
  the outputs of the released weights (spec 7.4).
- ``"bin_centres"``: output k reads disparity ``fx_baseline / (downsample * z_k)`` at the LSS bin centres z_k;
  the caller must then pass fx of the *resized* image.
Sampling is ``grid_sample(align_corners=True)`` along disparity: linear between integer disparities, and each of
the two neighbours outside [0, max_disp - 1] reads 0.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssckit.models.lifting.depth_net import GN_GROUPS, CameraGate, apply_key_rules


class StereoFeatureReducer(nn.Module):
    """Shared camera-aware reducer: 3x3 conv + GN(2) + ReLU, camera gate, 1x1 conv to ``out_channels``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int = 64, cam_channels: int = 30):
        super().__init__()
        self.reduce_conv = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1),
                                         nn.GroupNorm(GN_GROUPS, mid_channels), nn.ReLU())
        self.gate = CameraGate(cam_channels, mid_channels)
        self.proj = nn.Conv2d(mid_channels, out_channels, 1)

    def forward(self, x: Tensor, cam: Tensor) -> Tensor:
        """x (N, C_in, H, W), cam (N, cam_channels) -> (N, out_channels, H, W)."""
        return self.proj(self.gate(self.reduce_conv(x), cam.reshape(-1, cam.shape[-1])))


def build_gwc_volume(ref: Tensor, tgt: Tensor, max_disp: int, num_groups: int) -> Tensor:
    """Group-wise correlation volume, all disparities at once.

    ref, tgt (B, C, H, W) -> (B, G, max_disp, H, W); entry [g, d, h, w] = mean_c ref[c, h, w] * tgt[c, h, w - d]
    over the C / G channels of group g, 0 where w < d.
    """
    b, c, h, w = ref.shape
    if c % num_groups:
        raise ValueError(f"{c} channels not divisible into {num_groups} groups")
    padded = F.pad(tgt, (max_disp - 1, 0))  # (B, C, H, W + D - 1), zeros on the left
    shifted = padded.unfold(3, w, 1)  # (B, C, H, D, W) view; window j holds tgt[w - (D - 1 - j)]
    cost = (ref.unsqueeze(3) * shifted).view(b, num_groups, c // num_groups, h, max_disp, w).mean(2)
    return cost.flip(3).permute(0, 1, 3, 2, 4).contiguous()  # (B, G, D, H, W), index d = disparity


def official_disparities(fx_baseline: Tensor, num_depths: int) -> Tensor:
    """Official ``warp`` positions: (B,) -> (B, num_depths), entry i-1 = fx_baseline / 4 / i for i = 1..num_depths."""
    steps = torch.arange(1, num_depths + 1, device=fx_baseline.device, dtype=torch.float32)
    return (fx_baseline.float() / 4.0)[:, None] / steps[None, :]


def bin_centre_disparities(fx_baseline: Tensor, depths: Tensor, downsample: int) -> Tensor:
    """Disparity (in feature-map pixels) of each depth bin centre: (B,), (D,) -> (B, D) = fxb / (ds * z)."""
    return (fx_baseline.float() / downsample)[:, None] / depths.to(fx_baseline.device).float()[None, :]


def sample_disparity(volume: Tensor, positions: Tensor) -> Tensor:
    """Linear interpolation along dim 2 at fractional positions, zeros outside (grid_sample, align_corners=True).

    volume (B, G, Din, H, W), positions (B, Dout) -> (B, G, Dout, H, W).
    """
    b, g, d_in, h, w = volume.shape
    d_out = positions.shape[1]
    lo = positions.floor()
    frac = (positions - lo).to(volume.dtype)
    lo = lo.long()
    hi = lo + 1
    w_lo = (1 - frac) * ((lo >= 0) & (lo < d_in)).to(volume.dtype)  # (B, Dout)
    w_hi = frac * ((hi >= 0) & (hi < d_in)).to(volume.dtype)
    offsets = torch.arange(b, device=volume.device)[:, None] * d_in
    flat = volume.transpose(1, 2).reshape(b * d_in, g, h, w)  # (B*Din, G, H, W)
    v_lo = flat.index_select(0, (lo.clamp(0, d_in - 1) + offsets).reshape(-1)).view(b, d_out, g, h, w)
    v_hi = flat.index_select(0, (hi.clamp(0, d_in - 1) + offsets).reshape(-1)).view(b, d_out, g, h, w)
    out = v_lo * w_lo[:, :, None, None, None] + v_hi * w_hi[:, :, None, None, None]  # (B, Dout, G, H, W)
    return out.transpose(1, 2).contiguous()


class ConvGN3d(nn.Module):
    """Bias-free 3D conv + GroupNorm(2) (official ``convbn_3d`` with the GN norm_cfg)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.norm = nn.GroupNorm(GN_GROUPS, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class Hourglass3d(nn.Module):
    """PSMNet/GwcNet hourglass: two stride-2 stages (C -> 2C -> 4C), transposed-conv decoder with 1x1 skips.

    Each spatial size must be divisible by 4 (the decoder doubles exactly).
    """

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.conv1 = ConvGN3d(c, 2 * c, 3, 2, 1)
        self.conv2 = ConvGN3d(2 * c, 2 * c, 3, 1, 1)
        self.conv3 = ConvGN3d(2 * c, 4 * c, 3, 2, 1)
        self.conv4 = ConvGN3d(4 * c, 4 * c, 3, 1, 1)
        self.deconv5 = nn.ConvTranspose3d(4 * c, 2 * c, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.bn5 = nn.BatchNorm3d(2 * c)
        self.deconv6 = nn.ConvTranspose3d(2 * c, c, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.bn6 = nn.BatchNorm3d(c)
        self.redir1 = ConvGN3d(c, c, 1, 1, 0)
        self.redir2 = ConvGN3d(2 * c, 2 * c, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, D, H, W) -> same shape."""
        c2 = F.relu(self.conv2(F.relu(self.conv1(x))))
        c4 = F.relu(self.conv4(F.relu(self.conv3(c2))))
        c5 = F.relu(self.bn5(self.deconv5(c4)) + self.redir2(c2))
        return F.relu(self.bn6(self.deconv6(c5)) + self.redir1(x))


class StereoVolumeNet(nn.Module):
    """Stereo depth distribution (official ``GwcNet_volume_encoder``): returns softmax over depth (B, D, H, W)."""

    def __init__(self, in_channels: int, max_disp: int, cam_channels: int = 30, feat_channels: int = 64,
                 num_groups: int = 32, cost_channels: int = 32, num_hourglasses: int = 3,
                 disparity_sampling: Literal["official", "bin_centres"] = "official",
                 depth_bins: Optional[Sequence[float]] = None, downsample: int = 8):
        super().__init__()
        if disparity_sampling not in ("official", "bin_centres"):
            raise ValueError(f"unknown disparity_sampling {disparity_sampling!r}")
        if disparity_sampling == "bin_centres" and not depth_bins:
            raise ValueError("disparity_sampling='bin_centres' needs depth_bins")
        self.max_disp, self.num_groups = max_disp, num_groups
        self.disparity_sampling, self.downsample = disparity_sampling, downsample
        bins = torch.tensor(list(depth_bins) if depth_bins else [], dtype=torch.float32)
        self.register_buffer("depth_bins", bins, persistent=False)
        self.reducer = StereoFeatureReducer(in_channels, in_channels, feat_channels, cam_channels)
        self.dres0 = nn.ModuleList([ConvGN3d(num_groups, cost_channels, 3, 1, 1),
                                    ConvGN3d(cost_channels, cost_channels, 3, 1, 1)])
        self.dres1 = nn.ModuleList([ConvGN3d(cost_channels, cost_channels, 3, 1, 1),
                                    ConvGN3d(cost_channels, cost_channels, 3, 1, 1)])
        self.hourglasses = nn.ModuleList([Hourglass3d(cost_channels) for _ in range(num_hourglasses)])
        self.classif = ConvGN3d(cost_channels, cost_channels, 3, 1, 1)
        self.classif_out = nn.Conv3d(cost_channels, 1, 3, padding=1, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """Official init: convs N(0, sqrt(2 / (prod(kernel) * C_out))), BN weight 1 / bias 0, Linear bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (math.prod(m.kernel_size) * m.out_channels)))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def disparities(self, fx_baseline: Tensor) -> Tensor:
        """(B,) fx * baseline -> (B, D_out) sampling positions on the disparity axis."""
        if self.disparity_sampling == "official":
            return official_disparities(fx_baseline, self.max_disp)
        return bin_centre_disparities(fx_baseline, self.depth_bins, self.downsample)

    def cost_volume(self, feat_left: Tensor, feat_right: Tensor, cam_left: Tensor, cam_right: Tensor,
                    fx_baseline: Tensor) -> Tensor:
        """Reduced features -> GWC volume -> resampled to depth: (B, G, D_out, H, W)."""
        b = feat_left.shape[0]
        feats = self.reducer(torch.cat([feat_left, feat_right]), torch.cat([cam_left, cam_right]))
        volume = build_gwc_volume(feats[:b], feats[b:], self.max_disp, self.num_groups)
        return sample_disparity(volume, self.disparities(fx_baseline))

    def forward(self, feat_left: Tensor, feat_right: Tensor, cam_left: Tensor, cam_right: Tensor,
                fx_baseline: Tensor) -> Tensor:
        """feat_* (B, C, H, W), cam_* (B, cam_channels) raw camera vectors, fx_baseline (B,) = fx * baseline
        (original-image fx for "official", resized-image fx for "bin_centres") -> P_st (B, D_out, H, W)."""
        cost = self.cost_volume(feat_left, feat_right, cam_left, cam_right, fx_baseline)
        cost = F.relu(self.dres0[1](F.relu(self.dres0[0](cost))))
        cost = self.dres1[1](F.relu(self.dres1[0](cost))) + cost
        for hourglass in self.hourglasses:
            cost = hourglass(cost)
        logits = self.classif_out(F.relu(self.classif(cost))).squeeze(1)  # (B, D, H, W)
        return logits.softmax(dim=1)


# Hourglass keys relative to the hourglass module (official ``hourglass``).
HOURGLASS_RULES: tuple[tuple[str, str], ...] = (
    (r"conv([1-4])\.0\.0\.(.+)", r"conv\1.conv.\2"),
    (r"conv([1-4])\.0\.1\.(.+)", r"conv\1.norm.\2"),
    (r"conv([56])\.0\.(.+)", r"deconv\1.\2"),
    (r"conv([56])\.1\.(.+)", r"bn\1.\2"),
    (r"redir([12])\.0\.(.+)", r"redir\1.conv.\2"),
    (r"redir([12])\.1\.(.+)", r"redir\1.norm.\2"),
)


def official_hourglass_key(key: str) -> str:
    """Official ``hourglass`` key (relative) -> :class:`Hourglass3d` key."""
    return apply_key_rules(key, HOURGLASS_RULES, "hourglass")


_STEREO_RULES: tuple[tuple[str, object], ...] = (
    (r"feature_withcam\.reduce_conv\.([01])\.(.+)", r"reducer.reduce_conv.\1.\2"),
    (r"feature_withcam\.depth_mlp\.(fc[12]\..+)", r"reducer.gate.mlp.\1"),
    (r"feature_withcam\.depth_se\.(conv_(?:reduce|expand)\..+)", r"reducer.gate.se.\1"),
    (r"feature_withcam\.depth_conv\.0\.(.+)", r"reducer.proj.\1"),
    (r"dres([01])\.([02])\.0\.(.+)", lambda m: f"dres{m.group(1)}.{int(m.group(2)) // 2}.conv.{m.group(3)}"),
    (r"dres([01])\.([02])\.1\.(.+)", lambda m: f"dres{m.group(1)}.{int(m.group(2)) // 2}.norm.{m.group(3)}"),
    (r"dres([234])\.(.+)",
     lambda m: f"hourglasses.{int(m.group(1)) - 2}.{official_hourglass_key(m.group(2))}"),
    (r"classif3_1\.0\.0\.(.+)", r"classif.conv.\1"),
    (r"classif3_1\.0\.1\.(.+)", r"classif.norm.\1"),
    (r"classif3_2\.0\.(.+)", r"classif_out.\1"),
)


def official_stereo_key(key: str) -> str:
    """Official key relative to ``img_view_transformer.stereo_volume_net.`` -> :class:`StereoVolumeNet` key."""
    return apply_key_rules(key, _STEREO_RULES, "stereo_volume_net")
