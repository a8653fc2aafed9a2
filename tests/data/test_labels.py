"""Label tables against the published values of datasets.md §1.4, §3.4 and §4 (typed in by hand)."""
from __future__ import annotations

import numpy as np
import pytest

from ssckit.data.labels import KITTI_360, LUT_SIZE, SEMANTIC_KITTI, get_label_table

# datasets.md §1.4: learning id -> raw ids
SK_RAW = {
    0: [0], 1: [10, 252], 2: [11], 3: [15], 4: [18, 258], 5: [13, 16, 20, 256, 257, 259], 6: [30, 254],
    7: [31, 253], 8: [32, 255], 9: [40, 60], 10: [44], 11: [48], 12: [49], 13: [50], 14: [51], 15: [70], 16: [71],
    17: [72], 18: [80], 19: [81],
}
SK_INV = [0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81]
SK_WEIGHTS = [0.0446, 0.0603, 0.0852, 0.0856, 0.0747, 0.0734, 0.0801, 0.0796, 0.0818, 0.0557, 0.0653, 0.0568,
              0.0683, 0.0560, 0.0603, 0.0530, 0.0688, 0.0574, 0.0716, 0.0786]
# datasets.md §4
K360_RAW = {
    0: [0], 1: [10, 252], 2: [11], 3: [15], 4: [18, 258], 5: [13, 16, 20, 256, 257, 259], 6: [30, 254],
    7: [40, 60], 8: [44], 9: [48], 10: [49], 11: [50], 12: [51], 13: [70], 14: [72], 15: [80], 16: [81], 17: [52],
    18: [99],
}
K360_INV = [0, 10, 11, 15, 18, 20, 30, 40, 44, 48, 49, 50, 51, 70, 72, 80, 81, 52, 99]
K360_WEIGHTS = [0.0464, 0.0595, 0.0865, 0.0871, 0.0717, 0.0657, 0.0852, 0.0541, 0.0602, 0.0567, 0.0607, 0.0540,
                0.0636, 0.0513, 0.0564, 0.0701, 0.0774, 0.0580, 0.0690]


@pytest.mark.parametrize(("table", "raw_map", "n"), [(SEMANTIC_KITTI, SK_RAW, 20), (KITTI_360, K360_RAW, 19)])
def test_lut_maps_every_listed_raw_id_and_nothing_else(table, raw_map, n):
    assert table.num_classes == n and len(table.class_names) == n and len(table.palette) == n
    assert table.lut.shape == (LUT_SIZE,) == (359,) and table.lut.dtype == np.uint8
    expected = np.full(359, 255, dtype=np.uint8)
    for learn, raws in raw_map.items():
        expected[raws] = learn
    np.testing.assert_array_equal(table.lut, expected)


def test_semantic_kitti_other_classes_are_ignored_and_empty_stays_empty():
    np.testing.assert_array_equal(SEMANTIC_KITTI.to_learning(np.array([0, 1, 52, 99, 9, 358])), [0, 255, 255, 255,
                                                                                                  255, 255])


def test_kitti_360_ignored_raw_ids():
    ignored = [1, 31, 253, 32, 255, 71]  # outlier, bicyclist, motorcyclist, trunk (datasets.md §4)
    assert (KITTI_360.to_learning(np.array(ignored)) == 255).all()
    np.testing.assert_array_equal(KITTI_360.to_learning(np.array([52, 99, 72, 0])), [17, 18, 14, 0])


@pytest.mark.parametrize(("table", "inv"), [(SEMANTIC_KITTI, SK_INV), (KITTI_360, K360_INV)])
def test_learning_map_inv_round_trip(table, inv):
    learning = np.arange(table.num_classes, dtype=np.uint8).reshape(1, -1)
    raw = table.to_raw(learning)
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw[0], inv)
    np.testing.assert_array_equal(table.to_learning(raw), learning)
    with pytest.raises(ValueError, match=str(table.num_classes)):
        table.to_raw(np.array([table.num_classes]))


@pytest.mark.parametrize(("table", "weights"), [(SEMANTIC_KITTI, SK_WEIGHTS), (KITTI_360, K360_WEIGHTS)])
def test_ce_weights_match_published_values(table, weights):
    w = table.class_weights()
    assert w.dtype == np.float32 and w.shape == (table.num_classes,)
    np.testing.assert_array_equal(np.round(w.astype(np.float64), 4), weights)
    np.testing.assert_array_equal(np.round(table.class_weights(eps=1e-3).astype(np.float64), 4), weights)


def test_out_of_table_raw_ids_raise():
    with pytest.raises(ValueError, match="359"):
        SEMANTIC_KITTI.to_learning(np.array([10, 359]))
    with pytest.raises(ValueError, match="-1"):
        KITTI_360.to_learning(np.array([-1]))


def test_get_label_table():
    assert get_label_table("kitti_360") is KITTI_360
    with pytest.raises(ValueError, match="semantic_kitti"):
        get_label_table("nyu")
