"""VLScene image side: RepViT + FPN, DepthNet, stereo volume, depth fusion and the VL-distillation student.

Oracles: ``vlscene_unit_oracles.pt`` (official code, perturbed weights), ``vlscene_state_dict.tsv`` (official key
names/shapes) and ``vlscene_params.txt`` (official parameter counts). RepViT and FPN have no stored forward, so they
are checked against a functional re-statement of the official block/neck computation written on the official names.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssckit.models.backbones.fpn import FPN, official_fpn_key
from ssckit.models.backbones.repvit import REPVIT_M2_3, RepViTBackbone, official_repvit_key
from ssckit.models.lifting.depth_fusion import VolumeInteraction, official_fusion_key
from ssckit.models.lifting.depth_net import DepthNet, official_depthnet_key
from ssckit.models.lifting.stereo import (StereoVolumeNet, bin_centre_disparities, build_gwc_volume,
                                          official_disparities, official_stereo_key, sample_disparity)
from ssckit.models.lifting.vl_distill import VLDistillStudent, official_vl_distill_key


@pytest.fixture(scope="module")
def vdir(oracle_dir) -> Path:
    d = oracle_dir / "vlscene"
    if not (d / "vlscene_unit_oracles.pt").is_file():
        pytest.skip(f"VLScene oracle not found under {d}")
    return d


@pytest.fixture(scope="module")
def oracles(vdir) -> dict:
    return torch.load(vdir / "vlscene_unit_oracles.pt", weights_only=True)


def _close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    torch.testing.assert_close(got, want, atol=rel * want.abs().max().item(), rtol=0)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Random non-trivial weights and BN statistics (as the oracles do), so zero-init parts matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


# ----------------------------------------------------------------------------------------------------- oracles
def test_depthnet_oracle(oracles):
    entry = oracles["depthnet"]
    net = DepthNet(32, 32, 16, 12, cam_channels=30).eval()
    net.load_state_dict({official_depthnet_key(k): v for k, v in entry["state_dict"].items()})
    with torch.no_grad():
        out = net(entry["inputs"]["x"], entry["inputs"]["mlp_input"])  # batch 2
    _close(out, entry["output"])


def test_stereo_volume_oracle(oracles):
    entry = oracles["stereo_volume"]
    inp = entry["inputs"]
    vol = build_gwc_volume(inp["refimg_fea"], inp["targetimg_fea"], 12, 32)
    _close(vol, entry["gwc_volume"])
    warped = sample_disparity(entry["gwc_volume"], official_disparities(inp["calib"], 12))
    _close(warped, entry["warped"])


def test_volume_interaction_oracle(oracles):
    entry = oracles["volume_interaction"]
    net = VolumeInteraction(32).eval()
    net.load_state_dict({official_fusion_key(k): v for k, v in entry["state_dict"].items()})
    stereo, lss = entry["inputs"]["stereo_volume"], entry["inputs"]["lss_volume"]
    inter = entry["intermediates"]
    with torch.no_grad():
        lss_g, stereo_g = net.attend(stereo, lss)
        out = net(stereo, lss)
    _close(lss_g, inter["lss_volume_from_stereoguidance"])
    _close(stereo_g, inter["stereo_volume_from_lssguidance"])
    # the attention term alone (gamma is small after perturbation): (result - kv) / gamma
    for got, want, kv, attn in ((lss_g, inter["lss_volume_from_stereoguidance"], lss, net.lss_from_stereo),
                                (stereo_g, inter["stereo_volume_from_lssguidance"], stereo, net.stereo_from_lss)):
        gamma = attn.gamma.item()
        _close((got - kv.unsqueeze(1)) / gamma, (want - kv.unsqueeze(1)) / gamma, rel=1e-4)
    _close(out, entry["output"])


def test_vl_distill_oracle(oracles):
    entry = oracles["vl_distill"]
    net = VLDistillStudent(16).eval()
    net.load_state_dict({official_vl_distill_key(k): v for k, v in entry["state_dict"].items()})
    inp, inter = entry["inputs"], entry["intermediates"]
    with torch.no_grad():
        out = net(inp["img_feat"], inp["vl_feat"], inp["seg_logits"])
    _close(out.enhanced, inter["E"])
    _close(out.target, inter["T"])
    _close(out.seg_logits, inter["seg_head_logits"])
    kd_feat = (inp["img_feat"] - out.target).abs().mean()
    kd_logits = F.cross_entropy(out.seg_logits, inp["seg_logits"].argmax(dim=1))
    _close(kd_feat, entry["kd_feat_loss"])
    _close(kd_logits, entry["kd_logits_loss"])


# ------------------------------------------------------------------------------------- stereo / fusion details
def test_disparity_positions_and_sampling():
    fxb = torch.tensor([100.0, 40.0])
    torch.testing.assert_close(official_disparities(fxb, 3), torch.tensor([[25.0, 12.5, 25 / 3], [10.0, 5.0, 10 / 3]]))
    # bin centres 2.0 / 2.5 m at 1/8 resolution: 100 / 16 = 6.25, 100 / 20 = 5
    torch.testing.assert_close(bin_centre_disparities(fxb[:1], torch.tensor([2.0, 2.5]), 8),
                               torch.tensor([[6.25, 5.0]]))
    vol = torch.arange(1.0, 5.0).view(1, 1, 4, 1, 1).expand(2, 1, 4, 1, 2)  # value d + 1 at disparity d
    pos = torch.tensor([[0.0, 2.0, 1.25, 3.5], [3.0, 4.0, 9.0, 0.5]])
    got = sample_disparity(vol, pos)[:, 0, :, 0, 0]
    torch.testing.assert_close(got, torch.tensor([[1.0, 3.0, 2.25, 0.5 * 4], [4.0, 0.0, 0.0, 1.5]]))


def test_stereo_net_batch2_and_modes():
    torch.manual_seed(0)
    kw = dict(in_channels=16, max_disp=8, cam_channels=30, feat_channels=64)
    net = StereoVolumeNet(**kw).eval()
    _perturb(net, 1)
    fl, fr, cam_l, cam_r = torch.randn(2, 16, 4, 12), torch.randn(2, 16, 4, 12), torch.randn(2, 30), torch.randn(2, 30)
    fxb = torch.tensor([20.0, 12.0])
    with torch.no_grad():
        out = net(fl, fr, cam_l, cam_r, fxb)
        one = net(fl[1:], fr[1:], cam_l[1:], cam_r[1:], fxb[1:])
    assert out.shape == (2, 8, 4, 12)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 4, 12))
    torch.testing.assert_close(out[1:], one, atol=1e-5, rtol=1e-5)
    fixed = StereoVolumeNet(**kw, disparity_sampling="bin_centres", depth_bins=[2.0 + 0.5 * k for k in range(4)])
    fixed.load_state_dict(net.state_dict())
    with torch.no_grad():
        cost_fixed = fixed.eval().cost_volume(fl, fr, cam_l, cam_r, fxb)
        cost_official = net.cost_volume(fl, fr, cam_l, cam_r, fxb)
    assert cost_fixed.shape == (2, 32, 4, 4, 12) and cost_official.shape == (2, 32, 8, 4, 12)
    # sample 0 (fxb 20): bin 0 (2.0 m) reads disparity 20 / (8 * 2.0) = 1.25, as official i = 4 (20 / 4 / 4)
    torch.testing.assert_close(cost_fixed[0, :, 0], cost_official[0, :, 3], atol=1e-6, rtol=1e-5)


def test_volume_interaction_batch2_and_backward():
    torch.manual_seed(0)
    net = VolumeInteraction(8).eval()
    _perturb(net, 2)
    stereo = torch.randn(2, 8, 4, 8).softmax(1).requires_grad_(True)
    lss = torch.randn(2, 8, 4, 8).softmax(1)
    out = net(stereo, lss)
    torch.testing.assert_close(out[1:], net(stereo[1:], lss[1:]), atol=1e-6, rtol=1e-5)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(stereo.grad).all() and stereo.grad.abs().sum() > 0
    assert net.lss_from_stereo.gamma.grad is not None and net.ca_alpha.grad is not None


def test_vl_distill_detach_flag():
    torch.manual_seed(0)
    feat = torch.randn(2, 8, 3, 5, requires_grad=True)
    vl, logits = torch.randn(2, 512, 3, 5), torch.randn(2, 21, 3, 5)
    for detach in (False, True):
        net = VLDistillStudent(8, detach_teacher=detach)
        out = net(feat, vl, logits)
        (feat - out.target).abs().mean().backward()
        fusion_grad = net.fusion[0].weight.grad
        assert (fusion_grad is None) == detach
        assert out.target.requires_grad != detach


# ------------------------------------------------------------------------------- RepViT / FPN vs official math
def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        False, 0.0, 1e-5)


def _conv_bn(x, sd, p, stride=1, groups=1):
    w = sd[p + "c.weight"]
    return _bn(F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups), sd, p + "bn.")


def _official_repvit(x, sd, n_blocks, taps):
    """Official RepViT forward on ``features.{i}`` names: stem, then RepViTBlock (stride 1: RepVGGDW + optional SE
    as token mixer; stride 2: DW 3x3 s2 -> 1x1), each followed by the residual 1x1 -> GELU -> 1x1 channel mixer."""
    x = _conv_bn(F.gelu(_conv_bn(x, sd, "features.0.0.", stride=2)), sd, "features.0.2.", stride=2)
    outs = []
    for i in range(1, n_blocks + 1):
        p, c = f"features.{i}.", x.shape[1]
        if p + "token_mixer.0.conv.c.weight" in sd:
            t = _conv_bn(x, sd, p + "token_mixer.0.conv.", groups=c) + x + F.conv2d(
                x, sd[p + "token_mixer.0.conv1.weight"], sd[p + "token_mixer.0.conv1.bias"], groups=c)
            t = _bn(t, sd, p + "token_mixer.0.bn.")
            if p + "token_mixer.1.fc1.weight" in sd:
                s = F.conv2d(t.mean((2, 3), keepdim=True), sd[p + "token_mixer.1.fc1.weight"],
                             sd[p + "token_mixer.1.fc1.bias"]).relu()
                t = t * F.conv2d(s, sd[p + "token_mixer.1.fc2.weight"], sd[p + "token_mixer.1.fc2.bias"]).sigmoid()
        else:
            t = _conv_bn(_conv_bn(x, sd, p + "token_mixer.0.", stride=2, groups=c), sd, p + "token_mixer.2.")
        x = t + _conv_bn(F.gelu(_conv_bn(t, sd, p + "channel_mixer.m.0.")), sd, p + "channel_mixer.m.2.")
        if i in taps:
            outs.append(x)
    return outs


def _tsv_shapes(vdir: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (vdir / "vlscene_state_dict.tsv").read_text().splitlines()[1:]:
        key, shape = line.split("\t")[:2]
        if key.startswith(prefix):
            out[key[len(prefix):]] = () if shape == "scalar" else tuple(int(s) for s in shape.split("x"))
    return out


def test_repvit_mapping_matches_official_forward(vdir):
    official_keys = _tsv_shapes(vdir, "img_backbone.")  # the 54-block names; widths shrunk below
    net = RepViTBackbone(widths=(8, 16, 24, 32), depths=REPVIT_M2_3).eval()
    _perturb(net, 3)
    own = net.state_dict()
    official_sd = {k: own[official_repvit_key(k)] for k in official_keys}
    assert len(set(official_repvit_key(k) for k in official_keys)) == len(own)
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        got = net(x)
        want = _official_repvit(x, official_sd, 54, taps=(6, 14, 50, 54))
    assert [t.shape[1] for t in got] == [8, 16, 24, 32]
    for g, w in zip(got, want):
        _close(g, w)


def test_repvit_norm_eval():
    net = RepViTBackbone(widths=(8, 16, 24, 32), depths=(1, 1, 1, 1)).train()
    bn = net.stem.conv1.bn
    before = bn.running_mean.clone()
    net(torch.randn(2, 3, 32, 32))
    assert net.training and not bn.training and torch.equal(bn.running_mean, before)
    assert all(p.requires_grad for p in net.parameters())


def _official_fpn(feats, sd, start_level, num_outs, relu_before_extra):
    """mmdet FPN forward on official names (lateral, top-down nearest to exact size, fpn convs, extra on output)."""
    def conv(x, p, s=1):
        w = sd[p + ".conv.weight"]
        return F.conv2d(x, w, sd[p + ".conv.bias"], s, w.shape[-1] // 2)

    lat = [conv(f, f"lateral_convs.{i}") for i, f in enumerate(feats[start_level:])]
    for i in range(len(lat) - 1, 0, -1):
        lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
    outs = [conv(t, f"fpn_convs.{i}") for i, t in enumerate(lat)]
    outs.append(conv(outs[-1], f"fpn_convs.{len(lat)}", 2))
    for i in range(len(lat) + 1, num_outs):
        outs.append(conv(F.relu(outs[-1]) if relu_before_extra else outs[-1], f"fpn_convs.{i}", 2))
    return outs


@pytest.mark.parametrize("num_outs", [4, 5])
def test_fpn_matches_mmdet(num_outs):
    torch.manual_seed(0)
    fpn = FPN([8, 16, 24, 32], 12, num_outs, start_level=1, relu_before_extra_convs=True)
    _perturb(fpn, 4)
    feats = [torch.randn(2, c, 25 // 2 ** i, 38 // 2 ** i) for i, c in enumerate([8, 16, 24, 32])]  # odd sizes
    with torch.no_grad():
        got = fpn(feats)
        want = _official_fpn(feats, {official_fpn_key(k): v for k, v in fpn.state_dict().items()}, 1, num_outs, True)
    assert len(got) == num_outs and got[0].shape == (2, 12, 12, 19)
    for g, w in zip(got, want):
        _close(g, w)


# ------------------------------------------------------------------------- full-size build: counts and keys
@pytest.fixture(scope="module")
def full_size() -> dict:
    return {
        "img_backbone.": RepViTBackbone(),
        "img_neck.": FPN([80, 160, 320, 640], 128, 4, start_level=1, relu_before_extra_convs=True),
        "img_view_transformer.depth_net.": DepthNet(128, 128, 128, 112, cam_channels=30),
        "img_view_transformer.stereo_volume_net.": StereoVolumeNet(128, 112),
        "img_view_transformer.volume_interaction.": VolumeInteraction(32),
        "img_view_transformer.": VLDistillStudent(128),
    }


MAPPERS = {
    "img_backbone.": official_repvit_key,
    "img_neck.": official_fpn_key,
    "img_view_transformer.depth_net.": official_depthnet_key,
    "img_view_transformer.stereo_volume_net.": official_stereo_key,
    "img_view_transformer.volume_interaction.": official_fusion_key,
    "img_view_transformer.": official_vl_distill_key,
}
VL_PREFIXES = ("clip_fusion.", "img_clip_fusion.", "img_seg_head.")


def test_full_size_parameter_counts(vdir, full_size):
    text = (vdir / "vlscene_params.txt").read_text()
    expected = {  # official counts, each also checked to be written in vlscene_params.txt
        "img_backbone.": 22_404_232, "img_neck.": 734_080, "img_view_transformer.depth_net.": 1_788_350,
        "img_view_transformer.stereo_volume_net.": 3_685_600, "img_view_transformer.volume_interaction.": 1_170_612,
        "img_view_transformer.": 202_368 + 66_048 + 593_557,
    }
    for prefix, n in expected.items():
        assert f"{n:,}" in text, prefix
        assert sum(p.numel() for p in full_size[prefix].parameters()) == n, prefix
    assert re.search(r"img_view_transformer\.\[train-only\]\s+861,973", text)


def test_official_keys_map_with_equal_shapes(vdir, full_size):
    for prefix, module in full_size.items():
        official = _tsv_shapes(vdir, prefix)
        if prefix == "img_view_transformer.":
            official = {k: v for k, v in official.items() if k.startswith(VL_PREFIXES)}
        own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        mapped = {MAPPERS[prefix](k): shape for k, shape in official.items()}
        assert len(mapped) == len(official), prefix  # injective
        assert mapped == own, prefix  # every official key lands on a module entry of equal shape, and vice versa



def test_repvit_load_pretrained_timm_and_official_names(vdir, tmp_path):
    from ssckit.errors import DataError

    src = RepViTBackbone(widths=(8, 16, 24, 32))
    _perturb(src, 5)
    sd = src.state_dict()
    timm_file, official_file, bad_file = tmp_path / "timm.pth", tmp_path / "official.pth", tmp_path / "bad.pth"
    torch.save({**sd, "head.head.l.weight": torch.zeros(3, 32)}, timm_file)
    official = {k: sd[official_repvit_key(k)] for k in _tsv_shapes(vdir, "img_backbone.")}
    torch.save({"model": {**official, "classifier.classifier.l.weight": torch.zeros(3, 32)}}, official_file)
    torch.save({k: v[..., :1] if v.dim() == 4 else v for k, v in sd.items()}, bad_file)
    for path in (timm_file, official_file):
        dst = RepViTBackbone(widths=(8, 16, 24, 32))
        dst.load_pretrained(path)
        for k, v in dst.state_dict().items():
            assert torch.equal(v, sd[k]), (path.name, k)
    with pytest.raises(DataError):
        RepViTBackbone(widths=(8, 16, 24, 32)).load_pretrained(bad_file)
