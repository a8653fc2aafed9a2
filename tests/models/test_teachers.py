"""VLScene teachers: LSeg structure (official keys), input path, checkpoint loading, CLIP text tower, cache."""
from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import torch

from ssckit.data.datasets import FrameId
from ssckit.errors import DataError, SsckitError
from ssckit.models.teachers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CachedTeacher,
    CLIPConfig,
    LSegConfig,
    LSegTeacher,
    RandomTeacher,
    load_text_embeddings,
    vlscene_left_image,
    write_cache_entry,
)

OFFICIAL_PREFIX = "clip_net.vlseg_encoder."
TINY_CLIP = CLIPConfig(embed_dim=24, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
                       context_length=8, vocab_size=50, transformer_width=16, transformer_heads=2,
                       transformer_layers=2)
TINY = LSegConfig(vit_img_size=32, vit_patch_size=16, vit_embed_dim=32, vit_depth=4, vit_heads=2, vit_num_classes=10,
                  hooks=(0, 1, 2, 3), reassemble_channels=(8, 16, 32, 32), features=16, out_dim=24, clip=TINY_CLIP)
FEAT = (3, 10)  # student grid of a 24 x 80 input


def tiny_teacher(seed: int = 0, **kw) -> LSegTeacher:
    torch.manual_seed(seed)
    teacher = LSegTeacher(FEAT, torch.randn(21, 24), TINY, crop_size=64, **kw)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for name, buf in teacher.net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return teacher


def imagenet_normalise(rgb01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb01 - mean) / std


# --- structure of the released model -------------------------------------------------------------------------------

def test_full_size_key_set_and_shapes_match_official(oracle_dir):
    rows = list(csv.DictReader(open(oracle_dir / "vlscene" / "vlscene_teacher_state_dict.tsv"), delimiter="\t"))
    assert len(rows) == 730
    teacher = LSegTeacher(device="meta")  # ViT-L/16 + CLIP ViT-B/32 without allocating memory
    ours = {OFFICIAL_PREFIX + k: "x".join(map(str, v.shape)) if v.dim() else "scalar"
            for k, v in teacher.net.state_dict().items()}
    official = {r["key"]: r["shape"] for r in rows}
    assert set(ours) == set(official)
    assert ours == official
    n_params = sum(p.numel() for p in teacher.parameters())
    assert n_params == sum(int(r["numel"]) for r in rows if r["kind"] == "param") == 495_136_489
    # the teacher's own state dict is the Lightning checkpoint's key set (net.*), text embeddings not included
    assert set(teacher.state_dict()) == {"net." + k[len(OFFICIAL_PREFIX):] for k in official}


# --- forward -------------------------------------------------------------------------------------------------------

def test_tiny_forward_shapes_frozen_and_bounded_logits():
    teacher = tiny_teacher()
    teacher.train()
    assert not teacher.training and not teacher.net.scratch.refinenet1.resConfUnit1.bn1.training
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 24, 80, requires_grad=True)
    feats, logits = teacher(x)
    assert feats.shape == (2, 24, 3, 10) and logits.shape == (2, 21, 3, 10)
    assert feats.dtype == logits.dtype == torch.float32
    assert not feats.requires_grad and not logits.requires_grad
    # cosine similarity scaled by 1/0.07, then only convex (bilinear) resampling: |logit| <= 1/0.07
    assert logits.abs().max() <= 1 / 0.07 + 1e-4
    assert logits.std() > 0.1
    assert teacher.net.encode_image(torch.zeros(1, 3, 64, 64)).shape == (1, 24, 32, 32)  # half resolution


def test_lseg_input_renormalises_and_pads_with_black():
    teacher = tiny_teacher()
    image = imagenet_normalise(torch.full((1, 3, 24, 80), 0.75))
    x, height = teacher.lseg_input(image)
    assert height == 19  # int(64 * 24 / 80)
    assert x.shape == (1, 3, 64, 64)
    torch.testing.assert_close(x[:, :, :19], torch.full((1, 3, 19, 64), 0.5), atol=1e-5, rtol=0)  # (0.75-.5)/.5
    assert torch.equal(x[:, :, 19:], torch.full((1, 3, 45, 64), -1.0))
    quirk = tiny_teacher(imagenet_input_quirk=True)
    xq, _ = quirk.lseg_input(image)
    expect = (0.75 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(xq[0, :, 5, 7], expect, atol=1e-5, rtol=0)
    assert torch.equal(xq[:, :, 19:], torch.full((1, 3, 45, 64), -1.0))


def test_official_sizes_and_feature_crop_rows():
    fixed = LSegTeacher((48, 160), None, TINY, crop_size=480)
    quirk = LSegTeacher((48, 160), None, TINY, crop_size=480, misaligned_features_quirk=True)
    x, height = fixed.lseg_input(torch.zeros(1, 3, 384, 1280))
    assert height == 144 and x.shape == (1, 3, 480, 480)
    assert fixed.valid_rows(144, 240) == 72  # rows of the half-resolution map that hold the image
    assert quirk.valid_rows(144, 240) == 144  # official: full-resolution bounds on the half-resolution map


def test_misaligned_quirk_changes_features_only():
    fixed, quirk = tiny_teacher(), tiny_teacher(misaligned_features_quirk=True)
    x = torch.randn(1, 3, 24, 80)
    f1, l1 = fixed(x)
    f2, l2 = quirk(x)
    torch.testing.assert_close(l1, l2)
    assert (f1 - f2).abs().max() > 1e-3


def test_position_embedding_identity_at_native_grid():
    teacher = tiny_teacher()
    torch.testing.assert_close(teacher.net.pretrained.position_embedding(2, 2), teacher.net.pretrained.model.pos_embed)
    assert teacher.net.pretrained.position_embedding(4, 6).shape == (1, 1 + 24, 32)


def test_clip_text_tower_is_causal_and_reads_end_of_text():
    clip = tiny_teacher().net.clip_pretrained
    base = torch.tensor([[1, 5, 7, 49, 0, 0, 0, 0]])  # 49 = end of text (largest id) at position 3
    after = torch.tensor([[1, 5, 7, 49, 3, 9, 2, 4]])  # differs only after the end-of-text token
    before = torch.tensor([[1, 6, 7, 49, 0, 0, 0, 0]])  # differs before it
    with torch.no_grad():
        e_base, e_after, e_before = (clip.encode_text(t) for t in (base, after, before))
    assert e_base.shape == (1, 24)
    torch.testing.assert_close(e_after, e_base)
    assert (e_before - e_base).abs().max() > 1e-4
    with pytest.raises(ValueError):
        clip.encode_text(torch.zeros(1, 7, dtype=torch.long))


# --- checkpoint loading --------------------------------------------------------------------------------------------

def save_checkpoint(path, state: dict, prefix: str = "net.", extra: dict | None = None) -> None:
    sd = {prefix + k: v for k, v in state.items()}
    sd.update(extra or {})
    # Lightning-style: the hyper-parameters are arbitrary pickled objects (forces the non-weights-only fallback)
    torch.save({"epoch": 199, "state_dict": sd, "hyper_parameters": argparse.Namespace(backbone="clip_vitl16_384")},
               path)


def test_load_lightning_checkpoint_reproduces_source(tmp_path):
    source = tiny_teacher(seed=1)
    state = dict(source.net.state_dict())
    state = {k: (v.half() if k.startswith("clip_pretrained.transformer") and v.is_floating_point() else v)
             for k, v in state.items()}  # CLIP weights are stored in fp16 by clip.load on a GPU
    ckpt = tmp_path / "demo_e200.ckpt"
    save_checkpoint(ckpt, state)
    for target in (tiny_teacher(seed=2), LSegTeacher(FEAT, None, TINY, crop_size=64, device="meta")):
        target.load_checkpoint(ckpt)
        target.set_text_embeddings(source.text_embeddings)
        for (name, a), b in zip(target.net.state_dict().items(), state.values()):
            assert not a.is_meta and a.dtype == (torch.int64 if "num_batches" in name else torch.float32), name
            torch.testing.assert_close(a, b.to(a.dtype), rtol=0, atol=0, msg=name)
        assert not any(p.requires_grad for p in target.parameters())
    x = torch.randn(1, 3, 24, 80)
    for got, want in zip(target(x), source(x)):  # the image path has no fp16 weights: same outputs
        torch.testing.assert_close(got, want)


def test_load_vlscene_prefix_ignores_other_modules(tmp_path):
    source = tiny_teacher(seed=3)
    ckpt = tmp_path / "vlscene.pth"
    save_checkpoint(ckpt, source.net.state_dict(), OFFICIAL_PREFIX, extra={"img_backbone.w": torch.zeros(2)})
    target = tiny_teacher(seed=4).load_checkpoint(ckpt)
    torch.testing.assert_close(target.net.scratch.head1.weight, source.net.scratch.head1.weight)


@pytest.mark.parametrize("change, words", [
    ("drop", ["1 missing key", "scratch.head1.bias"]),
    ("add", ["1 unexpected key", "scratch.head2.weight"]),
    ("reshape", ["shape mismatch", "scratch.head1.bias"]),
])
def test_checkpoint_key_errors_name_file_and_keys(tmp_path, change, words):
    state = dict(tiny_teacher().net.state_dict())
    if change == "drop":
        del state["scratch.head1.bias"]
    elif change == "add":
        state["scratch.head2.weight"] = torch.zeros(3)
    else:
        state["scratch.head1.bias"] = torch.zeros(5)
    ckpt = tmp_path / "bad.ckpt"
    save_checkpoint(ckpt, state)
    with pytest.raises(DataError) as err:
        tiny_teacher().load_checkpoint(ckpt)
    assert str(ckpt) in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_checkpoint_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        tiny_teacher().load_checkpoint(tmp_path / "nope.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.conv.weight": torch.zeros(1)}}, other)
    with pytest.raises(DataError, match="not an LSeg checkpoint"):
        tiny_teacher().load_checkpoint(other)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.ckpt"):
        tiny_teacher().load_checkpoint(junk)


# --- text embeddings -----------------------------------------------------------------------------------------------

def test_from_checkpoint_with_token_ids_uses_checkpoint_clip(tmp_path):
    source = tiny_teacher(seed=5)
    ckpt = tmp_path / "lseg.ckpt"
    save_checkpoint(ckpt, source.net.state_dict())
    tokens = torch.randint(1, 40, (21, 8))
    tokens[:, 4] = 49  # end of text
    torch.save(tokens, tmp_path / "tokens.pt")
    teacher = LSegTeacher.from_checkpoint(ckpt, tmp_path / "tokens.pt", FEAT, config=TINY, crop_size=64)
    with torch.no_grad():
        expect = source.net.clip_pretrained.encode_text(tokens)
    torch.testing.assert_close(teacher.text_embeddings, expect)
    assert teacher(torch.randn(1, 3, 24, 80))[1].shape == (1, 21, 3, 10)
    np.save(tmp_path / "bad.npy", np.zeros((21, 23), np.float32))
    with pytest.raises(DataError, match="bad.npy"):
        LSegTeacher.from_checkpoint(ckpt, tmp_path / "bad.npy", FEAT, config=TINY, crop_size=64)


def test_load_text_embeddings_formats(tmp_path):
    emb = torch.randn(21, 512)
    torch.save({"text_features": emb}, tmp_path / "a.pt")
    np.save(tmp_path / "b.npy", emb.numpy())
    torch.testing.assert_close(load_text_embeddings(tmp_path / "a.pt"), emb)
    torch.testing.assert_close(load_text_embeddings(tmp_path / "b.npy"), emb)
    torch.save(torch.zeros(21), tmp_path / "c.pt")
    with pytest.raises(DataError, match="c.pt"):
        load_text_embeddings(tmp_path / "c.pt")
    with pytest.raises(DataError, match="missing.pt"):
        load_text_embeddings(tmp_path / "missing.pt")


def test_teacher_without_text_refuses_to_run():
    teacher = LSegTeacher(FEAT, None, TINY, crop_size=64)
    with pytest.raises(RuntimeError, match="text embeddings"):
        teacher(torch.zeros(1, 3, 24, 80))


# --- random and cached teachers ------------------------------------------------------------------------------------

def test_random_teacher_deterministic_and_local():
    x = torch.randn(2, 3, 16, 40)
    f1, l1 = RandomTeacher((2, 5), seed=3)(x)
    f2, l2 = RandomTeacher((2, 5), seed=3)(x)
    assert torch.equal(f1, f2) and torch.equal(l1, l2)
    assert f1.shape == (2, 512, 2, 5) and l1.shape == (2, 21, 2, 5)
    assert not torch.equal(RandomTeacher((2, 5), seed=4)(x)[0], f1)
    const = torch.ones(1, 3, 16, 40) * torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)
    f, _ = RandomTeacher((2, 5))(const)
    assert torch.allclose(f, f[:, :, :1, :1].expand_as(f))  # constant image -> constant features


def test_cached_teacher_reads_and_reports_bad_files(tmp_path):
    frames = [FrameId("08", "000000"), FrameId("08", "000001")]
    feats = np.random.default_rng(0).normal(size=(2, 512, 2, 5)).astype(np.float32)
    logits = np.random.default_rng(1).normal(size=(2, 21, 2, 5)).astype(np.float32)
    for i, f in enumerate(frames):
        write_cache_entry(tmp_path / f.sequence / f"{f.frame}.npz", feats[i], logits[i])
    teacher = CachedTeacher(tmp_path, (2, 5))
    got_f, got_l = teacher(torch.zeros(2, 3, 16, 40), frames)
    np.testing.assert_allclose(got_f.numpy(), feats, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(got_l.numpy(), logits, atol=2e-3, rtol=1e-3)
    with pytest.raises(SsckitError):
        teacher(torch.zeros(1, 3, 16, 40))  # no frame ids
    missing = FrameId("08", "000002")
    with pytest.raises(DataError, match="08/000002.npz.*not found"):
        teacher(torch.zeros(1, 3, 16, 40), [missing])
    with pytest.raises(DataError, match=r"000000.npz.*shape \(512, 2, 5\), expected \(512, 3, 5\)"):
        CachedTeacher(tmp_path, (3, 5))(torch.zeros(1, 3, 24, 40), frames[:1])
    (tmp_path / "08" / "000001.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="000001.npz"):
        teacher(torch.zeros(1, 3, 16, 40), frames[1:])
    with pytest.raises(DataError, match="not found"):
        CachedTeacher(tmp_path / "absent", (2, 5))


# --- VLScene image pipeline ----------------------------------------------------------------------------------------

def _normalised(rows: np.ndarray) -> np.ndarray:
    return ((rows / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)


def test_vlscene_left_image_keeps_bottom_rows():
    img = np.zeros((390, 1280, 3), np.uint8)
    img[:, :, 0] = np.arange(390)[:, None] % 256  # row index in red
    img[:, :, 2] = 200
    out = vlscene_left_image(img)  # width already 1280: no resampling, rows 6..389 kept
    assert out.shape == (3, 384, 1280) and out.dtype == np.float32
    np.testing.assert_allclose(out, _normalised(img[6:].astype(np.float64)), atol=1e-5)
    short = vlscene_left_image(img[:380])  # 380 rows: 4 black rows on top (KITTI-360 case)
    np.testing.assert_allclose(short[:, :4], _normalised(np.zeros((4, 1280, 3))), atol=1e-5)
    np.testing.assert_allclose(short[:, 4:], _normalised(img[:380].astype(np.float64)), atol=1e-5)
    const = vlscene_left_image(np.full((376, 1241, 3), 90, np.uint8))  # resized x1280/1241: 387 rows, keep 3..386
    np.testing.assert_allclose(const, _normalised(np.full((384, 1280, 3), 90.0)), atol=1e-5)
