"""Known answers for stages.common.ml.metrics (binary and multiclass)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.ml import metrics as M

pytestmark = pytest.mark.unit


def test_perfect_predictions_score_one() -> None:
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    m = M.binary_metrics(y, p, 0.5)
    assert m["auc"] == 1.0
    assert m["sensitivity"] == m["specificity"] == m["precision"] == m["f1"] == 1.0
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 0, 3, 0)
    assert (m["n_pos"], m["n_neg"]) == (2, 3)


def test_inverted_predictions_score_zero_auc() -> None:
    y = np.array([0, 0, 1, 1])
    m = M.binary_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    assert m["auc"] == 0.0
    assert m["sensitivity"] == 0.0 and m["specificity"] == 0.0


def test_random_predictions_auc_near_half() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    p = rng.random(4000)
    assert abs(M.auc(y, p) - 0.5) < 0.03


def test_hand_computed_confusion_counts() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4])
    m = M.binary_metrics(y, p, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_undefined_ratios_are_nan_not_zero() -> None:
    m = M.binary_metrics(np.array([0, 0, 0]), np.array([0.1, 0.2, 0.3]), 0.5)
    assert np.isnan(m["sensitivity"]) and np.isnan(m["precision"]) and np.isnan(m["auc"])
    assert m["specificity"] == 1.0


def test_binary_metrics_rejects_bad_labels_and_lengths() -> None:
    with pytest.raises(ValueError):
        M.binary_metrics(np.array([0, 2]), np.array([0.1, 0.2]), 0.5)
    with pytest.raises(ValueError):
        M.binary_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2]), 0.5)


def test_bootstrap_ci_contains_point_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.3 * y + rng.normal(0.35, 0.2, 300), 0, 1)
    point = M.auc(y, p)
    lo, hi = M.bootstrap_auc_ci(y, p, 300, seed=7)
    assert lo < point < hi
    assert 0.5 < lo and hi < 1.0
    assert (lo, hi) == M.bootstrap_auc_ci(y, p, 300, seed=7)
    assert (lo, hi) != M.bootstrap_auc_ci(y, p, 300, seed=8)


def test_youden_threshold_separates_a_simple_case() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.35, 0.6, 0.7, 0.9])
    t = M.youden_threshold(y, p)
    assert 0.35 < t <= 0.6
    m = M.binary_metrics(y, p, t)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0


def test_curve_tables_have_valid_ranges() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    p = rng.random(200)
    roc = M.roc_table(y, p)
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and np.all(np.diff(roc["fpr"]) >= 0)
    pr = M.pr_table(y, p)
    assert len(pr["recall"]) == len(pr["precision"]) == len(pr["threshold"])
    cal = M.calibration_table(y, p, n_bins=5)
    assert cal["count"].sum() == 200
    assert np.all((cal["predicted"] >= 0) & (cal["predicted"] <= 1))


def test_multiclass_helpers_known_answers() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    cm = M.confusion_matrix(y, pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert M.accuracy(y, pred) == pytest.approx(4 / 6)
    # F1: class0 2*1/(2+1+1)=0.5, class1 2*2/(4+1+0)=0.8, class2 2*1/(2+0+1)=2/3
    assert M.macro_f1(y, pred, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    mm = M.multiclass_metrics(y, pred, 3)
    assert mm["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert mm["n"] == 6
    with pytest.raises(ValueError):
        M.confusion_matrix(y, np.array([0, 1, 1, 1, 3, 0]), 3)


@pytest.mark.unit
def test_cluster_bootstrap_accuracy_ci_resamples_patients() -> None:
    from stages.common.ml.metrics import cluster_bootstrap_accuracy_ci

    # 10 patients, each either all right or all wrong: the interval is as wide as 10 coin-like
    # patients allow, wider than 100 independent images would give.
    correct = np.repeat([True] * 7 + [False] * 3, 10)
    patients = np.repeat(np.arange(10), 10)
    lo, hi = cluster_bootstrap_accuracy_ci(correct, patients, 2000, seed=0)
    assert lo < 0.7 < hi and hi - lo > 0.4
    lo_i, hi_i = cluster_bootstrap_accuracy_ci(correct, np.arange(100), 2000, seed=0)
    assert lo_i < 0.7 < hi_i and hi_i - lo_i < 0.25
    assert cluster_bootstrap_accuracy_ci([True] * 5, [1, 2, 3, 4, 5], 100, 0) == (1.0, 1.0)
    assert np.isnan(cluster_bootstrap_accuracy_ci([], [], 10, 0)[0])


@pytest.mark.unit
def test_log_loss_known_answers() -> None:
    prob = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    assert M.log_loss([0, 1], prob) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2)
    # a confident miss costs -log(eps), not infinity
    assert M.log_loss([2], np.array([[1.0, 0.0, 0.0]]), eps=1e-7) == pytest.approx(-np.log(1e-7))
    assert np.isnan(M.log_loss([], np.zeros((0, 3))))
    with pytest.raises(ValueError):
        M.log_loss([3], prob[:1])
    with pytest.raises(ValueError):
        M.log_loss([0, 1, 2], prob)
