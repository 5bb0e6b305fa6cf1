"""Paired comparison statistics: known answers, brute force, and the promotion rule."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stages.common.ml.metrics import accuracy, auc
from stages.common.ml.paired import decide, delong_test, paired_bootstrap

pytestmark = pytest.mark.unit


def _brute_force_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong's variance of AUC(b) - AUC(a) from its definition (pairwise kernel, O(m n))."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def psi(x: float, z: float) -> float:
        return 1.0 if x > z else 0.5 if x == z else 0.0

    comps = []
    for p in (a, b):
        v10 = np.array([np.mean([psi(p[i], p[j]) for j in neg]) for i in pos])
        v01 = np.array([np.mean([psi(p[i], p[j]) for i in pos]) for j in neg])
        comps.append((v10, v01))
    s10 = np.cov(np.vstack([comps[0][0], comps[1][0]]))
    s01 = np.cov(np.vstack([comps[0][1], comps[1][1]]))
    c = np.array([-1.0, 1.0])
    var = c @ (s10 / len(pos) + s01 / len(neg)) @ c
    return float(comps[1][0].mean() - comps[0][0].mean()), float(np.sqrt(var))


def test_delong_matches_its_definition_and_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(60) < 0.3).astype(int)
    a = np.round(y * 0.5 + rng.normal(size=60), 1)  # rounding makes ties
    b = y * 1.0 + rng.normal(size=60)
    result = delong_test(y, a, b)
    diff, se = _brute_force_delong(y, a, b)
    assert result.auc_a == pytest.approx(roc_auc_score(y, a))
    assert result.auc_b == pytest.approx(roc_auc_score(y, b))
    assert result.difference == pytest.approx(diff)
    assert result.se == pytest.approx(se)
    assert result.ci_low < result.difference < result.ci_high


def test_delong_known_answer_on_a_tiny_table() -> None:
    # 2 positives, 2 negatives. a ranks one positive below one negative: AUC(a) = 3/4;
    # b separates them: AUC(b) = 1. By hand: V10_a = (1, 1/2), V10_b = (1, 1),
    # V01_a = (1, 1/2), V01_b = (1, 1); var of the difference = 1/8 / 2 + 1/8 / 2 = 1/8.
    y = np.array([1, 1, 0, 0])
    a = np.array([0.9, 0.4, 0.5, 0.1])
    b = np.array([0.9, 0.8, 0.5, 0.1])
    result = delong_test(y, a, b)
    assert (result.auc_a, result.auc_b, result.difference) == (0.75, 1.0, 0.25)
    assert result.se == pytest.approx(np.sqrt(1 / 8))


def test_delong_same_model_is_no_difference_and_bad_input_fails() -> None:
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.1, 0.7, 0.3, 0.9, 0.2])
    same = delong_test(y, p, p)
    assert (same.difference, same.p_value) == (0.0, 1.0)
    with pytest.raises(ValueError, match="both classes"):
        delong_test([1, 1], [0.1, 0.2], [0.3, 0.4])
    with pytest.raises(ValueError, match="lengths"):
        delong_test(y, p, p[:-1])


def test_delong_finds_a_real_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.25).astype(int)
    weak = y * 0.3 + rng.normal(size=400)
    strong = y * 1.5 + rng.normal(size=400)
    assert delong_test(y, weak, strong).p_value < 1e-6
    other = y * 0.3 + rng.normal(size=400)  # same signal, other noise
    assert delong_test(y, weak, other).p_value > 0.05


def test_paired_bootstrap_known_difference_and_clusters() -> None:
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    a = np.array([1, 1, 1, 1, 0, 0, 0, 0])  # accuracy 0.5
    b = y.copy()  # accuracy 1.0
    diff, lo, hi = paired_bootstrap(accuracy, y, a, b, n_bootstrap=200, seed=0)
    assert diff == 0.5 and 0.0 < lo <= 0.5 <= hi <= 1.0
    # identical models: every resample's difference is exactly 0
    assert paired_bootstrap(accuracy, y, a, a, 50, 0) == (0.0, 0.0, 0.0)
    # one cluster holding everything: every resample is the full data
    diff, lo, hi = paired_bootstrap(accuracy, y, a, b, 50, 0, clusters=["p"] * 8)
    assert diff == lo == hi == 0.5


def test_paired_bootstrap_skips_undefined_resamples() -> None:
    y = np.array([1, 0, 0, 0])
    a = np.array([0.2, 0.5, 0.1, 0.3])
    b = np.array([0.9, 0.5, 0.1, 0.3])
    diff, lo, hi = paired_bootstrap(auc, y, a, b, 300, 3)
    assert diff == pytest.approx(1.0 - 1 / 3)
    assert np.isfinite(lo) and lo <= hi


@pytest.mark.parametrize(
    ("champion", "challenger", "ci", "promote", "why"),
    [
        (0.70, 0.75, (0.01, 0.09), True, "better by"),
        (0.70, 0.75, (-0.01, 0.11), False, "within noise"),
        (0.70, 0.702, (0.001, 0.003), False, "below the margin"),
        (0.70, 0.80, (float("nan"), float("nan")), False, "undefined"),
    ],
)
def test_decide_needs_the_margin_and_an_interval_above_zero(
    champion: float, challenger: float, ci: tuple[float, float], promote: bool, why: str
) -> None:
    verdict = decide("auc", champion, challenger, ci, 0.005, 452, "DeLong")
    assert verdict.promote is promote and why in verdict.reason
    assert verdict.as_dict()["n_records"] == 452


def test_every_combination_of_rule_inputs_is_consistent() -> None:
    for diff, low in itertools.product((-0.02, 0.0, 0.004, 0.006, 0.05), (-0.01, 0.0, 0.001)):
        v = decide("auc", 0.7, 0.7 + diff, (low, low + 0.1), 0.005, 10, "x")
        assert v.promote == (diff >= 0.005 - 1e-12 and low > 0)
