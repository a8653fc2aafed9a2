"""VLScene's extra losses: depth BCE (binning + quirk flag), Lovász-softmax and the two distillation losses."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssckit.losses import (depth_bce, depth_bin_targets, depth_patch_min, kd_feat_loss, kd_logits_loss,
                           lovasz_softmax)

# ---- depth ----


def test_depth_patch_min_ignores_zeros() -> None:
    depth = torch.tensor([[[0.0, 3.1, 0.0, 0.0],
                           [2.6, 9.0, 0.0, 0.0]]])
    assert depth_patch_min(depth, 2).tolist() == [[[pytest.approx(2.6), 0.0]]]


@pytest.mark.parametrize("d, nearest, legacy", [
    (1.7, -1, -1), (1.8, 0, -1), (2.0, 0, -1), (2.2, 0, -1), (2.3, 1, 0), (2.5, 1, 0),
    (57.5, 111, 110), (57.8, -1, 111), (58.3, -1, -1), (0.0, -1, -1),
])
def test_depth_bins_nearest_vs_official(d: float, nearest: int, legacy: int) -> None:
    depth = torch.tensor([d])
    assert depth_bin_targets(depth, 112).item() == nearest  # centres 2.0 + 0.5 k (vlscene.md §7.3 fix)
    assert depth_bin_targets(depth, 112, legacy_binning=True).item() == legacy


def test_legacy_bins_equal_official_one_hot_route() -> None:
    """Re-derive the official label: g = (d - 1.75)/0.5, keep 0 <= g < D+1, one-hot over D+1, drop column 0."""
    depth = np.random.default_rng(0).uniform(0.0, 60.0, size=500).astype(np.float32)
    g = (depth.astype(np.float64) - 1.75) / 0.5
    g = np.where((g < 113) & (g >= 0), g, 0).astype(np.int64)
    onehot = np.eye(113)[g][:, 1:]
    official = np.where(onehot.max(1) > 0, onehot.argmax(1), -1)
    got = depth_bin_targets(torch.from_numpy(depth), 112, legacy_binning=True).numpy()
    assert (got == official).all()


def test_depth_bce_hand_value() -> None:
    gt = torch.tensor([[[0.0, 3.1, 0.0, 0.0],
                        [2.6, 9.0, 0.0, 0.0]]])  # patch 1 -> 2.6 m, patch 2 -> no depth
    probs = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.3, 0.3, 0.2, 0.2]]).T.reshape(1, 4, 1, 2)
    # 4 bins from 2.0 m, step 0.5: nearest bin of 2.6 is 1 (2.5 m); official quirk puts it in bin 0
    nearest = -(math.log(0.9) + math.log(0.6) + math.log(0.8) + math.log(0.9))
    legacy = -(math.log(0.1) + math.log(0.4) + math.log(0.8) + math.log(0.9))
    assert depth_bce(probs, gt, downsample=2).item() == pytest.approx(nearest, rel=1e-6)
    assert depth_bce(probs, gt, downsample=2, legacy_binning=True).item() == pytest.approx(legacy, rel=1e-6)
    assert depth_bce(probs.half(), gt, downsample=2).item() == pytest.approx(
        depth_bce(probs.half().float(), gt, downsample=2).item(), rel=1e-7)


def test_depth_bce_no_foreground_and_grads() -> None:
    logits = torch.randn(2, 6, 3, 4, requires_grad=True)
    assert depth_bce(logits.softmax(1), torch.zeros(2, 12, 16), downsample=4).item() == 0.0
    gt = torch.rand(2, 12, 16) * 4.0 + 1.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = depth_bce(logits.softmax(1), gt, downsample=4)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        depth_bce(logits.softmax(1), gt[:, :10], downsample=4)


# ---- Lovász ----


def np_lovasz(probs: np.ndarray, y: np.ndarray) -> float:
    """Per-class loop following Berman et al.: sort errors, dot with the Jaccard-loss increments."""
    losses = []
    for c in range(probs.shape[1]):
        fg = (y == c).astype(np.float64)
        if fg.sum() == 0:
            continue
        err = np.abs(fg - probs[:, c])
        order = np.argsort(-err, kind="stable")
        f = fg[order]
        jac = 1.0 - (f.sum() - np.cumsum(f)) / (f.sum() + np.cumsum(1 - f))
        losses.append(float(np.dot(err[order], np.diff(jac, prepend=0.0))))
    return float(np.mean(losses))


def test_lovasz_hand_values() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    # class 0: errors sorted (0.4 neg, 0.2 pos) -> grads (0.5, 0.5) -> 0.3; class 1: (0.4 pos, 0.2 neg) -> (1, 0)
    assert lovasz_softmax(probs.log().float(), torch.tensor([0, 1])).item() == pytest.approx(0.35, rel=1e-6)
    # only class 1 present: loss = mean(1 - p_1) = (0.1 + 0.3) / 2
    probs = torch.tensor([[0.1, 0.9, 0.0 + 1e-12], [0.3, 0.7, 1e-12]], dtype=torch.float64)
    assert lovasz_softmax(probs.log().float(), torch.tensor([1, 1])).item() == pytest.approx(0.2, rel=1e-5)


def test_lovasz_ignore_batch_and_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[target == 2] = 1  # class 2 absent
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    keep = target.reshape(-1) != 255
    probs = logits.double().softmax(1).movedim(1, -1).reshape(-1, 4)[keep].numpy()
    expected = np_lovasz(probs, target.reshape(-1)[keep].numpy())
    assert lovasz_softmax(logits, target).item() == pytest.approx(expected, rel=1e-5)
    flat = lovasz_softmax(logits.movedim(1, -1).reshape(-1, 4), target.reshape(-1))  # (N, C) form
    assert flat.item() == pytest.approx(expected, rel=1e-5)
    # ignore_index=0 drops class-0 points (VLScene's point head)
    keep0 = keep & (target.reshape(-1) != 0)
    probs0 = logits.double().softmax(1).movedim(1, -1).reshape(-1, 4)[keep0].numpy()
    target0 = torch.where(target == 255, torch.zeros_like(target), target)
    assert lovasz_softmax(logits, target0, ignore_index=0).item() == pytest.approx(
        np_lovasz(probs0, target0.reshape(-1)[keep0].numpy()), rel=1e-5)


def test_lovasz_all_classes_grads_and_low_precision() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.ones(2, 4, 4, dtype=torch.long)
    probs = logits.detach().softmax(1)
    # "all": absent classes contribute max error = max p_c
    expected = ((1 - probs[:, 1]).mean() + probs[:, 0].max() + probs[:, 2].max()) / 3
    loss = lovasz_softmax(logits, target, classes="all")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    half = logits.detach().bfloat16()
    assert lovasz_softmax(half, target).dtype == torch.float32
    assert lovasz_softmax(half, target).item() == pytest.approx(lovasz_softmax(half.float(), target).item(), rel=1e-7)


# ---- distillation ----


def test_distill_hand_values_and_detach() -> None:
    student = torch.tensor([[[[1.0, 2.0]]]], requires_grad=True)  # (1, 1, 1, 2)
    target = torch.tensor([[[[0.5, 4.0]]]], requires_grad=True)
    assert kd_feat_loss(student, target).item() == pytest.approx(1.25)
    kd_feat_loss(student, target).backward()
    assert target.grad is not None  # no stop-gradient by default (official)
    target.grad = None
    kd_feat_loss(student, target, detach_target=True).backward()
    assert target.grad is None
    logits = torch.tensor([0.0, math.log(3.0)]).reshape(1, 2, 1, 1)  # softmax (0.25, 0.75)
    teacher = torch.tensor([-1.0, 5.0]).reshape(1, 2, 1, 1)  # argmax 1; batch 1 works
    assert kd_logits_loss(logits, teacher).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_distill_matches_vlscene_oracle(oracle_dir) -> None:
    path = oracle_dir / "vlscene" / "vlscene_unit_oracles.pt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    entry = torch.load(path, weights_only=True)["vl_distill"]
    feat = kd_feat_loss(entry["inputs"]["img_feat"], entry["intermediates"]["T"])
    logits = kd_logits_loss(entry["intermediates"]["seg_head_logits"], entry["inputs"]["seg_logits"])
    assert feat.item() == pytest.approx(entry["kd_feat_loss"].item(), rel=1e-6)
    assert logits.item() == pytest.approx(entry["kd_logits_loss"].item(), rel=1e-6)
