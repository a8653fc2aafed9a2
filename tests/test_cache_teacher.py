"""`ssckit cache-teacher` end to end with the RandomTeacher stand-in on a tiny SemanticKITTI tree."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from ssckit.commands import cache_teacher
from ssckit.data import io
from ssckit.data.datasets import FrameId
from ssckit.errors import DataError, SsckitError
from ssckit.models.teachers import CachedTeacher, RandomTeacher, vlscene_left_image

FRAMES = ("000000", "000005", "000010")
FEAT = (48, 160)  # 384 x 1280 input, stride 8


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cache_teacher.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.fixture()
def tree(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "semkitti"
    seq = root / "sequences" / "08"
    rng = np.random.default_rng(0)
    images = {}
    for frame in FRAMES:
        io.write_voxel_mask(seq / "voxels" / f"{frame}.bin", np.zeros(io.GRID, bool))
        images[frame] = rng.integers(0, 256, (37, 122, 3), dtype=np.uint8)  # small: resized x1280/122 by the pipeline
        io.write_image(seq / "image_2" / f"{frame}.png", images[frame])
    return root, images


def test_cache_round_trip_resume_and_corruption(tree, tmp_path, capsys):
    root, images = tree
    out = tmp_path / "cache"
    args = parse(root, "--out", out, "--random-teacher", "--device", "cpu", "--batch-size", "2", "--no-progress")
    assert cache_teacher.run(args) == 0
    assert "3 done, 0 skipped, 0 failed" in capsys.readouterr().out
    files = [out / "08" / f"{f}.npz" for f in FRAMES]
    assert all(p.is_file() for p in files)
    assert not list(out.rglob(".tmp-*"))  # atomic writes leave no temporaries

    # cached values = RandomTeacher on the VLScene-pipeline image, within fp16 rounding
    reference = RandomTeacher(FEAT)
    x = torch.from_numpy(np.stack([vlscene_left_image(images[f]) for f in FRAMES]))
    assert x.shape == (3, 3, 384, 1280)
    want_f, want_l = reference(x)
    frames = [FrameId("08", f) for f in FRAMES]
    got_f, got_l = CachedTeacher(out, FEAT)(torch.zeros(3, 3, 384, 1280), frames)
    torch.testing.assert_close(got_f, want_f, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got_l, want_l, atol=1e-3, rtol=1e-3)
    with np.load(files[0]) as npz:
        assert npz["features"].dtype == np.float16 and npz["logits"].shape == (21, 48, 160)

    # resumable: a second run skips every frame and rewrites nothing
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert cache_teacher.run(args) == 0
    assert "0 done, 3 skipped, 0 failed" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in files] == mtimes

    # a corrupt file is reported by the reader with its name
    files[1].write_bytes(files[1].read_bytes()[:1000])
    with pytest.raises(DataError, match="000005.npz"):
        CachedTeacher(out, FEAT)(torch.zeros(1, 3, 384, 1280), frames[1:2])


def test_unreadable_image_is_a_named_failure(tree, tmp_path, capsys):
    root, _ = tree
    (root / "sequences" / "08" / "image_2" / "000005.png").write_bytes(b"broken")
    args = parse(root, "--out", tmp_path / "cache", "--random-teacher", "--device", "cpu", "--no-progress",
                 "--sequences", "08")
    assert cache_teacher.run(args) == 1
    captured = capsys.readouterr()
    assert "2 done, 0 skipped, 1 failed" in captured.out
    assert "image_2/000005.png" in captured.err
    assert not (tmp_path / "cache" / "08" / "000005.npz").exists()


def test_lseg_needs_local_weights(tree, tmp_path):
    root, _ = tree
    with pytest.raises(SsckitError, match="--checkpoint and --text-embeddings"):
        cache_teacher.run(parse(root, "--out", tmp_path / "c", "--device", "cpu"))
    torch.save(torch.randn(21, 512), tmp_path / "t.pt")
    with pytest.raises(DataError, match="nope.ckpt"):
        cache_teacher.run(parse(root, "--out", tmp_path / "c", "--device", "cpu", "--checkpoint",
                                tmp_path / "nope.ckpt", "--text-embeddings", tmp_path / "t.pt"))
    with pytest.raises(SsckitError, match="multiple of 8"):
        cache_teacher.run(parse(root, "--out", tmp_path / "c", "--random-teacher", "--device", "cpu",
                                "--image-width", "1284"))
