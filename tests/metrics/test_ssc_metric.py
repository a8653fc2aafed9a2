"""SSCMetric / scores_from_confusion against hand-computed values (semantics of evaluate_completion.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssckit.metrics.ssc import (
    SSCMetric,
    confusion_matrix,
    format_table,
    scores_from_confusion,
    scores_to_official_yaml_dict,
)

EPS32 = float(np.finfo(np.float32).eps)

# 3 classes (0 = empty). Voxel 6 has GT 255 and is dropped. Pairs (pred, gt) left:
# (0,0) (1,1) (1,0) (2,2) (0,1) (2,1) (0,2)  ->  conf (rows pred) = [[1,1,1],[1,1,0],[0,1,1]]
PRED = [0, 1, 1, 2, 0, 2, 1, 0]
GT = [0, 1, 0, 2, 1, 1, 255, 2]
HAND_CONF = np.array([[1, 1, 1], [1, 1, 0], [0, 1, 1]])


def _metric(pred, gt, n=3, invalid=None) -> SSCMetric:
    m = SSCMetric(n)
    m.update(torch.tensor([pred]), torch.tensor([gt]), None if invalid is None else torch.tensor([invalid]))
    return m


def test_paper_example_confusion_and_scores():
    m = _metric(PRED, GT)
    assert m.confmat.dtype == torch.int64
    np.testing.assert_array_equal(m.confmat.numpy(), HAND_CONF)
    s = m.compute()
    # IoU: empty TP1 FP2 FN1 -> 1/4; class 1 TP1 FP1 FN2 -> 1/4; class 2 TP1 FP1 FN1 -> 1/3
    np.testing.assert_allclose(s["iou"].numpy(), [0.25, 0.25, 1 / 3], rtol=1e-12)
    assert float(s["miou"]) == pytest.approx((0.25 + 1 / 3) / 2, rel=1e-12)
    # occupied: TPo = 3, predicted occupied = 4, GT occupied = 5, all - conf[0,0] = 6
    assert float(s["precision"]) == pytest.approx(3 / (4 + EPS32), rel=1e-14)
    assert float(s["recall"]) == pytest.approx(3 / (5 + EPS32), rel=1e-14)
    assert float(s["iou_completion"]) == pytest.approx(0.5, rel=1e-14)


def test_numpy_path_matches_hand_values():
    conf = confusion_matrix(np.array(PRED), np.array(GT), 3)
    np.testing.assert_array_equal(conf, HAND_CONF)
    s = scores_from_confusion(HAND_CONF)
    assert s["miou"] == pytest.approx(7 / 24, rel=1e-12)
    assert s["iou_completion"] == pytest.approx(0.5)


def test_logits_equal_ids():
    pred = torch.tensor([PRED])                              # (1, 8)
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float() * 5 - 1  # (1, 3, 8)
    m = SSCMetric(3)
    m.update(logits, torch.tensor([GT]))
    np.testing.assert_array_equal(m.confmat.numpy(), HAND_CONF)


def test_class0_car_on_empty_is_false_positive_of_car():
    s = _metric([1, 0, 0, 0], [0, 0, 0, 0]).compute()
    np.testing.assert_allclose(s["iou"].numpy(), [0.75, 0.0, 0.0])  # empty: 3/(3+0+1)
    assert float(s["precision"]) == 0.0 and float(s["recall"]) == 0.0
    assert float(s["iou_completion"]) == 0.0  # 0 / (4 - 3)


def test_absent_classes_score_zero_and_count_in_miou():
    s = _metric([0, 1, 1, 0], [0, 1, 1, 0], n=4).compute()
    np.testing.assert_allclose(s["iou"].numpy(), [1, 1, 0, 0])
    assert float(s["miou"]) == pytest.approx(1 / 3)
    assert not torch.isnan(s["iou"]).any()


def test_invalid_voxels_and_255_are_excluded():
    # voxel 1 is wrong (pred 2, GT 1) but invalid; voxel 3 is wrong but GT 255
    m = _metric([1, 2, 0, 2], [1, 1, 0, 255], invalid=[False, True, False, False])
    np.testing.assert_array_equal(m.confmat.numpy(), [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    s = m.compute()
    np.testing.assert_allclose(s["iou"].numpy(), [1, 1, 0])
    assert float(s["iou_completion"]) == pytest.approx(1.0)


def test_global_accumulation_differs_from_per_frame_mean():
    # frame A: one car voxel, predicted -> IoU 1. frame B: 3 car voxels, 1 predicted -> IoU 1/3.
    # per-frame mean 2/3; global TP 2, FN 2 -> 1/2.
    m = SSCMetric(2)
    m.update(torch.tensor([[1, 0]]), torch.tensor([[1, 0]]))
    m.update(torch.tensor([[1, 0, 0, 0]]), torch.tensor([[1, 1, 1, 0]]))
    assert float(m.compute()["iou"][1]) == pytest.approx(0.5)


def test_merged_states_equal_one_metric_over_all_data():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (4, 6, 6, 3), generator=g)
    gt = torch.randint(0, 5, (4, 6, 6, 3), generator=g)
    gt[gt == 4] = 255
    full = SSCMetric(5)
    full.update(pred, gt)
    a, b = SSCMetric(5), SSCMetric(5)
    a.update(pred[:1], gt[:1])
    b.update(pred[1:], gt[1:])
    summed = (a.confmat + b.confmat).numpy()  # what the DDP "sum" reduction of the state does
    np.testing.assert_array_equal(summed, full.confmat.numpy())
    for key, value in scores_from_confusion(summed).items():
        np.testing.assert_allclose(value, full.compute()[key].numpy(), rtol=1e-15)
    a.merge_state(b)
    torch.testing.assert_close(a.confmat, full.confmat)
    np.testing.assert_array_equal(full.confmat.numpy(), confusion_matrix(pred.numpy(), gt.numpy(), 5))


def test_out_of_range_prediction_is_an_error():
    with pytest.raises(ValueError, match="prediction holds class id 255"):
        _metric([255, 0], [0, 0])
    with pytest.raises(ValueError, match="integer"):
        SSCMetric(3).update(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.long))


def test_yaml_dict_and_table():
    names = ("empty", "car", "road")
    s = scores_from_confusion(HAND_CONF)
    d = scores_to_official_yaml_dict(s, names)
    assert list(d) == ["iou_completion", "iou_mean", "iou_car", "iou_road", "precision", "recall"]
    assert d["iou_car"] == pytest.approx(0.25) and d["iou_road"] == pytest.approx(1 / 3)
    assert d["iou_mean"] == pytest.approx(7 / 24) and d["recall"] == pytest.approx(0.6)
    assert all(isinstance(v, float) for v in d.values())
    table = format_table(s, names)
    assert "road" in table and "33.33" in table and "29.17" in table and "75.00" in table  # road, mIoU, precision


def test_real_invalid_mask_is_excluded(real_root):
    from ssckit.data.io import read_voxel_mask

    invalid = read_voxel_mask(real_root / "sequences/08/voxels/001000.invalid")
    gt = torch.full((1, 256, 256, 32), 13, dtype=torch.uint8)  # synthetic: all building
    m = SSCMetric(20)
    m.update(torch.full_like(gt, 13), gt, torch.from_numpy(invalid)[None])
    assert int(m.confmat.sum()) == int(m.confmat[13, 13]) == 2_097_152 - 507_368  # datasets.md §6 count
