"""Tests of the confusion matrix, pixel accuracy and IoU."""

import math

import numpy as np
import pytest

from semseg_ros.core.metrics import ConfusionMatrix


def test_known_answer():
    cm = ConfusionMatrix(3)
    target = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm.update(pred, target)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert cm.pixel_accuracy() == pytest.approx(4 / 6)
    # class 0: tp 1, fn 1, fp 1 -> 1/3; class 1: 2 / 3; class 2: 1 / 2.
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert cm.mean_iou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_accumulates_over_updates():
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    cm.update(np.array([1, 1]), np.array([0, 1]))
    np.testing.assert_array_equal(cm.matrix, [[1, 1], [0, 2]])
    assert cm.pixel_accuracy() == pytest.approx(3 / 4)
    cm.reset()
    assert cm.total == 0
    assert math.isnan(cm.pixel_accuracy())
    assert math.isnan(cm.mean_iou())


def test_ignore_and_absent_class():
    cm = ConfusionMatrix(4, ignore_index=255)
    target = np.array([0, 0, 1, 255, 255, 1], np.uint8)
    pred = np.array([0, 1, 1, 3, 0, 1], np.uint8)
    cm.update(pred, target)
    # Ignored target pixels are not counted, whatever their prediction.
    assert cm.total == 4
    assert cm.pixel_accuracy() == pytest.approx(3 / 4)
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 2)
    assert iou[1] == pytest.approx(2 / 3)
    # Class 2 and 3 appear nowhere (class 3 only under an ignored pixel): NaN, left out.
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert cm.mean_iou() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_predicted_but_absent_class_has_zero_iou():
    cm = ConfusionMatrix(3)
    cm.update(np.array([2, 1]), np.array([1, 1]))
    np.testing.assert_allclose(cm.iou(), [np.nan, 1 / 2, 0.0])
    assert cm.mean_iou() == pytest.approx(0.25)


def test_invalid_predictions_count_as_wrong():
    # CamVid: 11 classes, 11 = void; the model can also predict 11 or more.
    cm = ConfusionMatrix(3, ignore_index=3)
    target = np.array([0, 0, 1, 1, 3])
    pred = np.array([0, 3, 1, 7, 0])
    cm.update(pred, target)
    assert cm.total == 4
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(cm.invalid, [1, 1, 0])
    assert cm.pixel_accuracy() == pytest.approx(2 / 4)
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1 / 2, np.nan])


def test_negative_prediction_is_wrong():
    cm = ConfusionMatrix(2)
    cm.update(np.array([-1, 1], np.int32), np.array([0, 1]))
    assert cm.pixel_accuracy() == pytest.approx(0.5)
    assert cm.iou()[0] == 0.0


def test_errors():
    cm = ConfusionMatrix(3, ignore_index=255)
    with pytest.raises(ValueError, match='shape'):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match=r'\[3, 7\]'):
        cm.update(np.zeros(4, int), np.array([0, 3, 7, 255]))
    with pytest.raises(ValueError, match=r'\[-1\]'):
        cm.update(np.zeros(2, int), np.array([-1, 0]))
    with pytest.raises(ValueError, match='integers'):
        cm.update(np.zeros(2, float), np.zeros(2, int))
    with pytest.raises(ValueError):
        ConfusionMatrix(0)
    assert cm.total == 0


def test_large_random_matches_direct_count():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, (64, 80))
    pred = rng.integers(0, 5, (64, 80))
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    direct = np.zeros((5, 5), np.int64)
    np.add.at(direct, (target.ravel(), pred.ravel()), 1)
    np.testing.assert_array_equal(cm.matrix, direct)
    assert cm.pixel_accuracy() == pytest.approx(np.mean(pred == target))
