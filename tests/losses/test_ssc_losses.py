"""Voxel losses: hand-computed values on tiny volumes and an independent float64 numpy re-derivation of the spec
formulas (datasets.md §3.4-§3.5, symphonies.md §9)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssckit.errors import SsckitError
from ssckit.losses import LOSSES, ce_ssc, frustum_proportion, geo_scal, sem_scal, ssc_losses


def logits_from_probs(rows: list[list[float]]) -> torch.Tensor:
    """(N, C) probabilities -> logits (1, C, N, 1, 1) whose softmax gives back exactly those probabilities."""
    return torch.tensor(rows, dtype=torch.float64).log().float().T.reshape(1, len(rows[0]), len(rows), 1, 1)


def labels(values: list[int]) -> torch.Tensor:
    return torch.tensor(values).reshape(1, len(values), 1, 1)


# ---- float64 numpy re-derivations (written from the spec text, loops allowed here) ----

def np_softmax(logits: np.ndarray) -> np.ndarray:
    """(B, C, ...) -> (M_all, C) softmax rows in flattening order b, spatial."""
    x = np.moveaxis(logits.astype(np.float64), 1, -1).reshape(-1, logits.shape[1])
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def bce1(x: float) -> float:
    return -max(math.log(x), -100.0) if x > 0 else 100.0


def np_sem_scal(logits: np.ndarray, target: np.ndarray) -> float:
    p_all, y_all = np_softmax(logits), target.reshape(-1)
    p, y = p_all[y_all != 255], y_all[y_all != 255]
    losses = []
    for c in range(p.shape[1]):
        yc = (y == c).astype(np.float64)
        if yc.sum() == 0:
            continue
        pc, loss = p[:, c], 0.0
        if pc.sum() > 0:
            loss += bce1((pc * yc).sum() / pc.sum())
        loss += bce1((pc * yc).sum() / yc.sum())
        if (1 - yc).sum() > 0:
            loss += bce1(((1 - pc) * (1 - yc)).sum() / (1 - yc).sum())
        losses.append(loss)
    return float(np.mean(losses))


def np_geo_scal(logits: np.ndarray, target: np.ndarray) -> float:
    p_all, y_all = np_softmax(logits), target.reshape(-1)
    p, y = p_all[y_all != 255], y_all[y_all != 255]
    o, t = 1.0 - p[:, 0], (y != 0).astype(np.float64)
    spec = ((1 - t) * p[:, 0]).sum() / (1 - t).sum()
    return bce1((t * o).sum() / o.sum()) + bce1((t * o).sum() / t.sum()) + bce1(spec)


def np_ce(logits: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    p, y = np_softmax(logits), target.reshape(-1)
    keep = y != 255
    w = weights[y[keep]]
    return float((w * -np.log(p[keep, y[keep]])).sum() / w.sum())


def np_frustum(logits: np.ndarray, target: np.ndarray, tiles: np.ndarray, num_tiles: int) -> float:
    """Official semantics: tile k of all samples is one frustum; mean KL over frustums with mass."""
    p, y, t = np_softmax(logits), target.reshape(-1), tiles.reshape(-1)
    kls = []
    for k in range(num_tiles):
        sel = (t == k) & (y != 255)
        if not sel.any():
            continue
        gt = np.bincount(y[sel], minlength=p.shape[1]) / sel.sum()
        pred = p[sel].sum(0) / p[sel].sum()
        nz = gt > 0
        kls.append(float((gt[nz] * (np.log(gt[nz]) - np.log(pred[nz]))).sum()))
    return float(np.mean(kls))


@pytest.fixture()
def random_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 5, 6, 4, 3, generator=g) * 2.0
    target = torch.randint(0, 5, (2, 6, 4, 3), generator=g)
    target[target == 3] = 2  # class 3 absent from the GT
    target[torch.rand(target.shape, generator=g) < 0.25] = 255
    tiles = torch.randint(-1, 6, (2, 6, 4, 3), generator=g)
    tiles[tiles == 4] = 5  # tile 4 has no voxel
    return logits, target, tiles


# ---- CE ----

def test_ce_hand_value_weights_and_ignore() -> None:
    logits = logits_from_probs([[0.8, 0.2], [0.4, 0.6], [0.01, 0.99]])
    target = labels([0, 1, 255])
    w = torch.tensor([0.5, 2.0])
    expected = (0.5 * -math.log(0.8) + 2.0 * -math.log(0.6)) / 2.5
    assert ce_ssc(logits, target, w).item() == pytest.approx(expected, rel=1e-6)
    assert ce_ssc(logits, target).item() == pytest.approx((-math.log(0.8) - math.log(0.6)) / 2, rel=1e-6)


def test_ce_random_matches_numpy(random_case) -> None:
    logits, target, _ = random_case
    w = torch.tensor([0.04, 0.06, 0.085, 0.07, 0.05])
    assert ce_ssc(logits, target, w).item() == pytest.approx(np_ce(logits.numpy(), target.numpy(), w.double().numpy()),
                                                             rel=1e-5)
    assert ce_ssc(logits, target.to(torch.uint8), w).item() == pytest.approx(ce_ssc(logits, target, w).item(), rel=1e-7)


# ---- SCAL ----

def test_scal_hand_values_with_class0_and_ignore() -> None:
    # voxel 3 is ignored: its extreme probabilities must not enter M
    logits = logits_from_probs([[0.8, 0.2], [0.4, 0.6], [1e-6, 1.0 - 1e-6]])
    target = labels([0, 1, 255])
    # class 0: P = 0.8/1.2, R = 0.8/1, S = (1-0.4)/1 ; class 1: P = 0.6/0.8, R = 0.6/1, S = (1-0.2)/1
    loss0 = -(math.log(0.8 / 1.2) + math.log(0.8) + math.log(0.6))
    loss1 = -(math.log(0.75) + math.log(0.6) + math.log(0.8))
    assert sem_scal(logits, target).item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)
    # geo: o = (0.2, 0.6), y = (0, 1): P = 0.6/0.8, R = 0.6/1, S = p_empty(v1)/1 = 0.8
    assert geo_scal(logits, target).item() == pytest.approx(-(math.log(0.75) + math.log(0.6) + math.log(0.8)), rel=1e-6)


def test_scal_terms_only_with_positive_denominators() -> None:
    logits = logits_from_probs([[0.2, 0.8], [0.4, 0.6]])
    target = labels([1, 1])  # class 0 absent; no negatives for class 1 -> no S term; geo has no empty voxel
    assert sem_scal(logits, target).item() == pytest.approx(-math.log(0.7), rel=1e-6)  # P = 1, R = 0.7
    assert geo_scal(logits, target).item() == pytest.approx(-math.log(0.7), rel=1e-6)


def test_scal_bce_clamp_at_100_and_finite_grads() -> None:
    logits = torch.tensor([[0.0, -200.0], [0.0, -200.0]]).T.reshape(1, 2, 2, 1, 1).requires_grad_(True)
    target = labels([1, 0])  # softmax is exactly (1, 0) in fp32 for both voxels
    # class 0: P = 1/2, R = 1, S = 0 -> 100 ; class 1: sum p = 0 -> no P term, R = 0 -> 100, S = 1 -> 0
    sem = sem_scal(logits, target)
    assert sem.item() == pytest.approx((math.log(2.0) + 100.0 + 100.0) / 2, rel=1e-6)
    geo = geo_scal(logits, target)  # o = 0 everywhere: no P term; R = 0 -> 100; S = 1 -> 0
    assert geo.item() == pytest.approx(100.0, rel=1e-6)
    (sem + geo).backward()
    assert torch.isfinite(logits.grad).all()


def test_scal_random_matches_numpy_absent_class(random_case) -> None:
    logits, target, _ = random_case
    assert sem_scal(logits, target).item() == pytest.approx(np_sem_scal(logits.numpy(), target.numpy()), rel=1e-5)
    assert geo_scal(logits, target).item() == pytest.approx(np_geo_scal(logits.numpy(), target.numpy()), rel=1e-5)


def test_batch_pools_like_concatenation(random_case) -> None:
    logits, target, tiles = random_case
    cat_logits = torch.cat([logits[0], logits[1]], dim=1)[None]  # (1, C, 2X, Y, Z)
    cat_target = torch.cat([target[0], target[1]], dim=0)[None]
    cat_tiles = torch.cat([tiles[0], tiles[1]], dim=0)[None]
    for fn in (sem_scal, geo_scal, ce_ssc):
        assert fn(logits, target).item() == pytest.approx(fn(cat_logits, cat_target).item(), rel=1e-6)
    assert frustum_proportion(logits, target, tiles, 6).item() == pytest.approx(
        frustum_proportion(cat_logits, cat_target, cat_tiles, 6).item(), rel=1e-6)
    per_sample = (sem_scal(logits[:1], target[:1]) + sem_scal(logits[1:], target[1:])) / 2
    assert abs(per_sample.item() - sem_scal(logits, target).item()) > 1e-3  # M really is pooled


# ---- frustum proportion ----

def test_frustum_hand_value() -> None:
    logits = logits_from_probs([
        [0.5, 0.25, 0.25],  # a: tile 0, GT 0 (empty counts: non-zero proportion, not non-zero id)
        [0.25, 0.5, 0.25],  # b: tile 0, GT 1
        [0.25, 0.25, 0.5],  # c: tile 1, GT 2
        [0.9, 0.05, 0.05],  # d: tile 1, GT 255 -> excluded
        [0.05, 0.05, 0.9],  # e: no tile -> excluded
    ])
    target = labels([0, 1, 2, 255, 1])
    tiles = labels([0, 0, 1, 1, -1])
    # tile 0: gt (1/2, 1/2, 0), pred (0.375, 0.375, 0.25) -> KL = ln(4/3); tile 1: gt (0,0,1), pred 0.5 -> ln 2
    # tile 2: empty -> not averaged
    expected = (math.log(4 / 3) + math.log(2.0)) / 2
    assert frustum_proportion(logits, target, tiles, num_tiles=3).item() == pytest.approx(expected, rel=1e-6)


def test_frustum_random_matches_numpy(random_case) -> None:
    logits, target, tiles = random_case
    expected = np_frustum(logits.numpy(), target.numpy(), tiles.numpy(), 6)
    assert frustum_proportion(logits, target, tiles, 6).item() == pytest.approx(expected, rel=1e-5)


def test_frustum_per_sample_mode(random_case) -> None:
    logits, target, tiles = random_case
    shifted = torch.where(tiles >= 0, tiles + torch.tensor([0, 6]).reshape(2, 1, 1, 1), tiles)
    expected = np_frustum(logits.numpy(), target.numpy(), shifted.numpy(), 12)
    got = frustum_proportion(logits, target, tiles, 6, pool_batch=False).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(frustum_proportion(logits, target, tiles, 6).item(), rel=1e-3)


# ---- precision, gradients, edge cases, helper ----

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_fp32_result(random_case, dtype) -> None:
    logits, target, tiles = random_case
    low = logits.to(dtype)
    for name, fn in LOSSES.items():
        kw = {"tile_ids": tiles, "num_tiles": 6} if name == "frustum" else {}
        got = fn(low, target, **kw)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(fn(low.float(), target, **kw).item(), rel=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under = fn(logits, target, **kw)
        assert under.dtype == torch.float32
        assert under.item() == pytest.approx(fn(logits, target, **kw).item(), rel=1e-6)


def test_gradients_finite_and_total(random_case) -> None:
    logits, target, tiles = random_case
    logits = (logits * 20).requires_grad_(True)  # saturated softmax
    w = torch.rand(5) + 0.1
    names = ("ce_ssc", "sem_scal", "geo_scal", "frustum")
    out = ssc_losses(logits, target, names, [1.0, 0.5, 2.0, 0.25], w, tiles, 6)
    expected_total = out["ce_ssc"] + 0.5 * out["sem_scal"] + 2.0 * out["geo_scal"] + 0.25 * out["frustum"]
    assert set(out) == set(names) | {"total"}
    assert out["total"].item() == pytest.approx(expected_total.item(), rel=1e-6)
    assert out["ce_ssc"].item() == pytest.approx(ce_ssc(logits, target, w).item(), rel=1e-7)
    out["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_all_ignored_gives_zero_with_graph() -> None:
    logits = torch.randn(1, 4, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    tiles = torch.zeros(1, 3, 2, 2, dtype=torch.long)
    out = ssc_losses(logits, target, ("ce_ssc", "sem_scal", "geo_scal", "frustum", "lovasz"),
                     tile_ids=tiles, num_tiles=2)
    for value in out.values():
        assert value.item() == 0.0
    out["total"].backward()
    assert torch.isfinite(logits.grad).all()


def test_ssc_losses_errors() -> None:
    logits, target = torch.randn(1, 3, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.long)
    with pytest.raises(SsckitError, match="valid names"):
        ssc_losses(logits, target, ["ce_ssc", "dice"])
    with pytest.raises(SsckitError, match="weights"):
        ssc_losses(logits, target, ["ce_ssc"], [1.0, 2.0])
    with pytest.raises(SsckitError, match="tile_ids"):
        ssc_losses(logits, target, ["frustum"])
    with pytest.raises(ValueError):
        sem_scal(logits, target[:, :1])
