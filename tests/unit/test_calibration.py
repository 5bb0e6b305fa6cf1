"""Temperature scaling and ECE on synthetic logits with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.ml.calibration import (
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    nll,
    reliability_table,
    softmax,
)

pytestmark = pytest.mark.unit


def _calibrated_logits(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    p = softmax(logits)
    y = np.array([rng.choice(k, p=row) for row in p])
    return logits, y


def test_recovers_the_temperature_of_overconfident_logits() -> None:
    logits, y = _calibrated_logits(6000, 3, seed=0)
    # a network 3x overconfident: its logits are the calibrated ones times 3
    t = fit_temperature(3.0 * logits, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(logits, y) == pytest.approx(1.0, rel=0.1)


def test_scaling_lowers_ece_and_nll_and_keeps_the_predicted_class() -> None:
    logits, y = _calibrated_logits(4000, 3, seed=1)
    over = 4.0 * logits
    t = fit_temperature(over, y)
    before, after = softmax(over), softmax(over, t)
    assert expected_calibration_error(after, y) < expected_calibration_error(before, y) / 2
    assert nll(over, y, t) < nll(over, y)
    assert (before.argmax(axis=1) == after.argmax(axis=1)).all()


def test_ece_known_answer() -> None:
    # two predictions at confidence 0.9 (one right), two at 0.6 (both right):
    # bin 0.9: |0.5 - 0.9| = 0.4, bin 0.6: |1.0 - 0.6| = 0.4; each holds half -> ECE 0.4
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    assert expected_calibration_error(prob, y) == pytest.approx(0.4)
    table = reliability_table(prob, y)
    assert table["count"].tolist() == [2, 2]
    assert table["accuracy"].tolist() == [1.0, 0.5]


def test_probabilities_round_trip_through_logits() -> None:
    prob = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]])
    assert np.allclose(softmax(logits_from_probabilities(prob)), prob)


def test_bad_input_fails_clearly() -> None:
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(np.zeros((0, 3)), [])
