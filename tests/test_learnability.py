"""The per-voxel majority baseline, and proof that the synthetic images determine the scene: a colour -> class
lookup learnt from training frames, lifted to 3D with the stereo depth, beats the majority baseline on held-out
frames of another world (sequence 08 vs training sequence 00)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssckit.baselines import majority_baseline
from ssckit.data.datasets import SemanticKITTI
from ssckit.data.synth import chromaticity
from ssckit.metrics.ssc import SSCMetric

ORIGIN = np.array([0.0, -25.6, -2.0])
NUM_CLASSES = 20
BINS = 48  # chromaticity (r, g) bins of the colour lookup


# --- majority baseline -------------------------------------------------------------------------------------------

def test_majority_baseline_hand_computed() -> None:
    a = np.array([[[0, 1, 255, 7]]], np.uint8)
    b = np.array([[[1, 0, 255, 3]]], np.uint8)
    c = np.array([[[1, 0, 255, 255]]], np.uint8)
    # voxel 0: 0,1,1 -> 1; voxel 1: 1,0,0 -> 0; voxel 2: never labelled -> fill; voxel 3: 7,3 tie -> smaller id 3
    assert majority_baseline([a, b, c]).tolist() == [[[1, 0, 0, 3]]]
    assert majority_baseline(iter([a, b, c]), fill=9).tolist() == [[[1, 0, 9, 3]]]
    assert majority_baseline([a, b]).tolist() == [[[0, 0, 0, 3]]]  # ties 0/1 -> 0
    assert majority_baseline([a]).dtype == np.uint8


def test_majority_baseline_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        majority_baseline([])
    with pytest.raises(ValueError):
        majority_baseline([np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8)])


# --- learnability ------------------------------------------------------------------------------------------------

def _project(ds: SemanticKITTI, f, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Voxel centres -> (cam-2 depth z, rounded pixel u, v, inside-image mask), flat over the grid."""
    calib = ds.read_calib(f.sequence)
    axes = [(np.arange(n) + 0.5) * 0.2 + o for n, o in zip((256, 256, 32), ORIGIN)]
    x, y, zz = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    P = calib["P2"] @ calib["Tr"]  # (3, 4): velodyne -> cam-2 pixels
    hom = [(P[r, 0] * x + P[r, 1] * y + P[r, 2] * zz + P[r, 3]).reshape(-1) for r in range(3)]  # affine per axis
    z = hom[2]
    u = np.round(hom[0] / np.maximum(z, 1e-6)).astype(int)
    v = np.round(hom[1] / np.maximum(z, 1e-6)).astype(int)
    inside = (z > 0.5) & (u >= 0) & (u < shape[1]) & (v >= 0) & (v < shape[0])
    return z, np.where(inside, u, 0), np.where(inside, v, 0), inside


def _colour_bin(rgb: np.ndarray) -> np.ndarray:
    ch = chromaticity(rgb)
    return np.minimum((ch[..., 0] * BINS).astype(int), BINS - 1) * BINS + np.minimum((ch[..., 1] * BINS).astype(int),
                                                                                      BINS - 1)


def _learn_colour_lookup(ds: SemanticKITTI) -> np.ndarray:
    """Chromaticity bin -> majority class of the training pixels that see an occupied GT voxel."""
    hist = np.zeros((BINS * BINS, NUM_CLASSES))
    for f in ds.frames:
        target, image, depth = ds.voxel_target(f).reshape(-1), ds.read_image(f), ds.read_depth(f)
        z, u, v, inside = _project(ds, f, depth.shape)
        seen = inside & (target > 0) & (target < 255)
        seen[seen] = np.abs(depth[v[seen], u[seen]] - z[seen]) < np.maximum(0.3, 0.05 * z[seen])
        np.add.at(hist, (_colour_bin(image[v[seen], u[seen]]), target[seen]), 1)
    known = np.flatnonzero(hist.sum(axis=1) > 0)
    bx, by = np.divmod(np.arange(BINS * BINS), BINS)
    nearest = ((bx[:, None] - bx[known]) ** 2 + (by[:, None] - by[known]) ** 2).argmin(axis=1)
    return hist.argmax(axis=1)[known][nearest]  # unseen colours: the nearest seen bin's class


def _lift(ds: SemanticKITTI, f, lookup: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Prior everywhere; voxels in front of the stereo depth are empty; voxels at it take the pixel's class."""
    image, depth = ds.read_image(f), ds.read_depth(f)
    z, u, v, inside = _project(ds, f, depth.shape)
    pred = prior.reshape(-1).copy()
    idx = np.flatnonzero(inside)
    d, zi = depth[v[idx], u[idx]], z[idx]
    pred[idx[zi < d - 0.3]] = 0
    surface = np.abs(zi - d) < np.maximum(0.2, 0.02 * d)
    pred[idx[surface]] = lookup[_colour_bin(image[v[idx[surface]], u[idx[surface]]])]
    return pred.reshape(prior.shape)


def _miou(held_out: SemanticKITTI, predict) -> float:
    """Official mIoU (ssckit.metrics.ssc) of ``predict(frame)`` over the held-out frames."""
    metric = SSCMetric(NUM_CLASSES)
    for f in held_out.frames:
        target = torch.from_numpy(held_out.voxel_target(f))
        metric.update(torch.from_numpy(predict(f).astype(np.int64))[None], target[None])
    return float(metric.compute()["miou"])


def test_image_and_depth_beat_the_majority_baseline(synth_root: Path) -> None:
    train = SemanticKITTI(synth_root, sequences=["00"], depth_root=synth_root / "depth")
    held_out = SemanticKITTI(synth_root, sequences=["08"], depth_root=synth_root / "depth")
    prior = majority_baseline(train.voxel_target(f) for f in train.frames)
    lookup = _learn_colour_lookup(train)
    miou_prior = _miou(held_out, lambda f: prior)
    miou_lift = _miou(held_out, lambda f: _lift(held_out, f, lookup, prior))
    assert miou_lift > 1.5 * miou_prior and miou_lift - miou_prior > 0.03, (miou_prior, miou_lift)
