"""Symphonies image encoder vs. the official-code oracles (spec §3, §4, §13).

Expected numbers come from the oracle files (official ResNet-50 + MaskDINO encoder + MMDetWrapper run on CPU) and
from spec §13 / symphonies_params.txt; nothing is produced by the code under test.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from ssckit.errors import DataError, SsckitError
from ssckit.models.backbones import (MaskDINOPixelDecoder, ResNetBackbone, SymphoniesEncoder, count_parameters)
from ssckit.models.convert import load_official_encoder_state, map_official_encoder_key

PD = "encoder.model.panoptic_head.pixel_decoder."


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """README tolerance for intermediates: atol = 1e-4 * max|expected|."""
    assert actual.shape == expected.shape
    atol = rel * expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"max |diff| {err:.3g} > {atol:.3g}"


def _mini_official_sd(oracle: dict) -> dict[str, torch.Tensor]:
    sd = {f"encoder.model.backbone.{k}": v for k, v in oracle["backbone_state_dict"].items()}
    sd.update({PD + k: v for k, v in oracle["pixel_decoder_state_dict"].items()})
    return sd


def _mini_encoder(build_unused: bool = True) -> SymphoniesEncoder:
    # reduced widths of the oracle: mmdet base_channels=8, conv_dim=mask_dim=32, FFN 64; 6 layers, 8 heads kept
    return SymphoniesEncoder(base_width=8, embed_dims=32, ffn_dims=64, build_unused=build_unused)


@pytest.fixture(scope="module")
def mini(oracle_dir: Path) -> dict:
    path = oracle_dir / "symphonies" / "symphonies_encoder_mini_oracle.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def full_encoder() -> SymphoniesEncoder:
    return SymphoniesEncoder(build_unused=True)  # built, never run on a full-size image


def test_mini_encoder_matches_official(mini: dict) -> None:
    enc = _mini_encoder()
    missing = load_official_encoder_state(enc, _mini_official_sd(mini), allow_missing=True)
    assert all(k.startswith(("query_embed", "pts_embed", "out_projs")) for k in missing)
    enc.eval()
    out, inter = mini["outputs"], mini["intermediates"]
    with torch.no_grad():
        res = enc.backbone(mini["inputs"]["img"])
        for a, e in zip(res, out["backbone"], strict=True):
            _close(a, e)
        pd = enc.pixel_decoder
        srcs = pd.project_inputs(out["backbone"])
        for a, e in zip(srcs, inter["transformer_srcs"], strict=True):
            _close(a, e)
        for a, e in zip(pd.position_encodings(srcs), inter["transformer_pos"], strict=True):
            _close(a, e)
        memory, shapes, starts = pd.encode(inter["transformer_srcs"], inter["transformer_pos"])
        _close(memory, inter["transformer_out"][0])
        assert shapes.tolist() == inter["transformer_out"][1].tolist() == [[10, 31], [5, 16], [3, 8], [2, 4]]
        assert starts.tolist() == inter["transformer_out"][2].tolist()
        dec = pd(res)  # end to end from the image
        for a, e in zip(dec.multi_scale, out["multi_scale"], strict=True):
            _close(a, e)
        _close(dec.mask_features, out["mask_features"])


def test_wrapper_head_matches_official(oracle_dir: Path, full_encoder: SymphoniesEncoder) -> None:
    path = oracle_dir / "symphonies" / "symphonies_tiny_wrapper_oracle.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ora = torch.load(path, weights_only=True)
    sd = {f"encoder.{k}": v for k, v in ora["wrapper_state_dict"].items()}
    missing = load_official_encoder_state(full_encoder, sd, allow_missing=True)
    assert not [k for k in missing if k.startswith(("query_embed", "pts_embed", "out_projs"))]
    full_encoder.eval()
    with torch.no_grad():
        got = full_encoder.project(ora["inputs"]["backbone_res2"], ora["inputs"]["pixel_decoder_multi_scale"])
    for a, e in zip(got.feats, ora["outputs"]["feats"], strict=True):
        _close(a, e)
    _close(got.queries, ora["outputs"]["queries"])
    _close(got.pred_pts, ora["outputs"]["pred_pts"])


def test_full_size_parameter_counts(full_encoder: SymphoniesEncoder) -> None:
    # spec §13 / symphonies_params.txt (frozen BN affine counted, as the official count does)
    assert count_parameters(full_encoder.backbone) == 23_508_032
    assert count_parameters(full_encoder.backbone, include_frozen_bn=False) == 23_508_032 - 53_120
    assert count_parameters(full_encoder.pixel_decoder) == 14_055_424
    wrapper = sum(p.numel() for n, p in full_encoder.named_parameters()
                  if not n.startswith(("backbone.", "pixel_decoder.")))
    assert wrapper == 161_992
    assert count_parameters(full_encoder) == 37_725_448
    assert count_parameters(MaskDINOPixelDecoder(build_unused=False)) == 14_055_424 - 722_176
    assert full_encoder.backbone.out_channels == (256, 512, 1024, 2048)


def test_every_official_encoder_key_maps(oracle_dir: Path, full_encoder: SymphoniesEncoder) -> None:
    path = oracle_dir / "symphonies" / "symphonies_state_dict.tsv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open() as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["key"].startswith("encoder.")]
    assert len(rows) == 469
    own = full_encoder.state_dict()
    hit, dropped = set(), []
    for r in rows:
        target = map_official_encoder_key(r["key"])
        if target is None:
            dropped.append(r["key"])
            continue
        shape = () if r["shape"] == "scalar" else tuple(int(s) for s in r["shape"].split("x"))
        assert target in own, f"{r['key']} -> {target}"
        assert tuple(own[target].shape) == shape, r["key"]
        assert target not in hit, f"two official keys map to {target}"
        hit.add(target)
    # only the criterion's class weights and the frozen-BN batch counters (53 BNs) are dropped
    counters = [k for k in dropped if k.startswith("encoder.model.backbone.") and k.endswith("num_batches_tracked")]
    assert len(counters) == 53  # 1 stem + 16 blocks x 3 + 4 downsample BNs
    assert sorted(set(dropped) - set(counters)) == ["encoder.model.panoptic_head.criterion.empty_weight"]
    assert set(own) == hit  # and every module entry is filled by exactly one official entry


def test_loader_fails_loudly(mini: dict) -> None:
    enc = _mini_encoder(build_unused=False)
    sd = _mini_official_sd(mini)
    load_official_encoder_state(enc, sd, allow_missing=True)  # FPN keys skipped: not built
    with pytest.raises(SsckitError, match="missing"):
        load_official_encoder_state(enc, sd)  # out_projs / queries absent from the file
    with pytest.raises(SsckitError, match="unmapped"):
        load_official_encoder_state(enc, {**sd, "encoder.model.neck.conv.weight": torch.zeros(1)}, allow_missing=True)
    bad = dict(sd)
    bad[PD + "transformer.level_embed"] = torch.zeros(5, 32)
    with pytest.raises(SsckitError, match="shape"):
        load_official_encoder_state(enc, bad, allow_missing=True)
    with pytest.raises(SsckitError, match="no encoder"):
        load_official_encoder_state(enc, {"model.encoder.query_embed.weight": torch.zeros(100, 128)},
                                    allow_missing=True)


def test_maskdino_checkpoint_detected(mini: dict, tmp_path: Path) -> None:
    coco = {f"backbone.{k}": v for k, v in mini["backbone_state_dict"].items()}
    coco.update({f"panoptic_head.pixel_decoder.{k}": v for k, v in mini["pixel_decoder_state_dict"].items()})
    coco["panoptic_head.predictor.query_feat.weight"] = torch.zeros(300, 32)  # deleted decoder: dropped
    torch.save(coco, tmp_path / "maskdino.pth")
    enc = SymphoniesEncoder(base_width=8, embed_dims=32, ffn_dims=64, pretrained_encoder=True,
                            checkpoint=tmp_path / "maskdino.pth")
    torch.testing.assert_close(enc.pixel_decoder.level_embed.detach(),
                               mini["pixel_decoder_state_dict"]["transformer.level_embed"], rtol=0, atol=0)
    torch.testing.assert_close(enc.backbone.body.layer4[2].bn3.running_var,
                               mini["backbone_state_dict"]["layer4.2.bn3.running_var"], rtol=0, atol=0)
    with pytest.raises(SsckitError, match="checkpoint"):
        SymphoniesEncoder(base_width=8, embed_dims=32, ffn_dims=64, pretrained_encoder=True)


def test_resnet_load_pretrained_local_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = ResNetBackbone(base_width=8, frozen_bn=False)  # trainable BN: torchvision/timm-style checkpoint
    with torch.no_grad():
        for name, buf in src.body.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.1)
    sd = {f"module.{k}": v for k, v in src.body.state_dict().items()}
    sd["module.fc.weight"], sd["module.fc.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    torch.save({"state_dict": sd}, tmp_path / "r50.pth")
    dst = ResNetBackbone(base_width=8)
    dst.load_pretrained(tmp_path / "r50.pth")
    img = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        want = src.eval()(img)
        got = dst.train()(img)  # frozen BN: running statistics even in train mode
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e)
    frozen_affine = [n for n, _ in dst.named_parameters() if n.split(".")[-2].startswith("bn") or "downsample.1" in n]
    assert frozen_affine == []  # BN weight/bias are fixed buffers, not trainable parameters
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "wrong.pth")
    with pytest.raises(DataError, match="wrong.pth"):
        dst.load_pretrained(tmp_path / "wrong.pth")


def test_batch_and_gradients() -> None:
    torch.manual_seed(0)
    enc = SymphoniesEncoder(base_width=8, embed_dims=32, ffn_dims=64, out_dims=16, num_queries=7)
    img = torch.randn(2, 3, 48, 80)
    out = enc.train()(img)
    assert [tuple(f.shape) for f in out.feats] == [(2, 16, 12, 20), (2, 16, 6, 10), (2, 16, 3, 5)]
    assert out.queries.shape == (2, 7, 16) and out.pred_pts.shape == (2, 7, 2)
    assert bool(((out.pred_pts > 0) & (out.pred_pts < 1)).all())
    (sum(f.square().mean() for f in out.feats) + out.queries.sum() + out.pred_pts.sum()).backward()
    # build_unused=False: every parameter takes part (DDP-safe)
    assert [n for n, p in enc.named_parameters() if p.grad is None] == []
    enc.eval()
    with torch.no_grad():
        both, one = enc(img), enc(img[1:])
    for a, e in zip(both.feats, one.feats, strict=True):
        torch.testing.assert_close(a[1:], e, rtol=1e-4, atol=1e-5)
