"""The anomaly threshold (out-of-fold conformal quantile) and the plane temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.ml.calibration import (
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    softmax,
)
from stages.ultrasound.anomaly.autoencoder import fit_latent_ring, ring_scores_from_codes
from stages.ultrasound.anomaly.threshold import (
    conformal_quantile,
    out_of_fold_scores,
    patient_folds,
)
from stages.ultrasound.planes.classifier import calibrated

pytestmark = pytest.mark.unit


def test_conformal_quantile_takes_the_corrected_rank() -> None:
    scores = np.arange(1.0, 100.0)  # 99 scores: rank ceil(100 * 0.95) = 95
    assert conformal_quantile(scores, 0.05) == 95.0
    assert conformal_quantile(np.arange(1.0, 11.0), 0.05) == 10.0  # too few: the largest
    assert np.isnan(conformal_quantile(np.zeros(0), 0.05))


def test_out_of_fold_threshold_holds_on_new_codes_where_the_in_sample_one_does_not() -> None:
    """100 normal 'codes' of 40 dimensions from 25 patients: distances to a Gaussian fitted on
    the codes themselves are small (in-sample); a new patient's are not. The out-of-fold
    conformal threshold keeps the false-alarm rate on new codes near the 5 % target."""
    rng = np.random.default_rng(0)
    d, n = 40, 100
    scale = rng.uniform(0.5, 2.0, d)
    codes = rng.normal(size=(n, d)) * scale
    new = rng.normal(size=(4000, d)) * scale
    x = np.zeros((n, 4, 4, 1))
    patients = [f"p{i // 4}" for i in range(n)]
    folds = patient_folds(patients, 5, seed=0)
    assert folds is not None and len(set(folds)) == 5
    for p in set(patients):  # a patient's images stay in one fold
        assert len({f for f, q in zip(folds, patients, strict=True) if q == p}) == 1
    # blank crops: the skull-ring part is 0 for every image, the score is the code's distance
    oof = out_of_fold_scores(codes, x, folds, shrinkage=0.1)
    latent = fit_latent_ring(codes, x, 0.1)
    in_sample = ring_scores_from_codes(codes, x, latent)
    new_scores = ring_scores_from_codes(new, np.zeros((len(new), 4, 4, 1)), latent)
    naive = np.percentile(in_sample, 95)
    honest = conformal_quantile(oof, 0.05)
    assert np.mean(new_scores > naive) > 0.15  # the in-sample percentile flags far too many
    assert np.mean(new_scores > honest) <= 0.10


def test_leave_one_patient_out_threshold_sits_nearer_its_target_than_five_folds() -> None:
    """Same 'codes' as above, four draws, target 10 %: 5-fold statistics are fitted on 80 % of
    the codes, score a new one as further out than the final statistics do, and the threshold
    flags well under the target (~3 % here); leaving one patient out (``n_folds`` 0) fits on
    nearly all and lands nearer 10 % without going over it."""
    rates: dict[int, list[float]] = {5: [], 0: []}
    for seed in range(4):
        rng = np.random.default_rng(seed)
        scale = rng.uniform(0.5, 2.0, 40)
        codes, new = rng.normal(size=(100, 40)) * scale, rng.normal(size=(4000, 40)) * scale
        x, patients = np.zeros((100, 4, 4, 1)), [f"p{i // 4}" for i in range(100)]
        latent = fit_latent_ring(codes, x, 0.1)
        new_scores = ring_scores_from_codes(new, np.zeros((4000, 4, 4, 1)), latent)
        for k in rates:
            folds = patient_folds(patients, k, seed=0)
            assert folds is not None and len(set(folds)) == (25 if k == 0 else 5)
            oof = out_of_fold_scores(codes, x, folds, shrinkage=0.1)
            rates[k].append(float(np.mean(new_scores > conformal_quantile(oof, 0.10))))
    five, lopo = np.mean(rates[5]), np.mean(rates[0])
    assert five < 0.05 < lopo <= 0.10


def test_temperature_scaling_lowers_the_ece_of_over_confident_probabilities() -> None:
    """A classifier right 70 % of the time that says 0.99: a temperature above 1 fitted on
    'validation' rows brings its ECE down, on those rows and on new ones; argmax unchanged."""
    rng = np.random.default_rng(1)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        pred = np.where(rng.random(n) < 0.7, y, (y + rng.integers(1, 3, n)) % 3)
        logits = rng.normal(0, 0.5, (n, 3))
        logits[np.arange(n), pred] += 6.0
        return softmax(logits), y

    p_val, y_val = draw(300)
    p_new, y_new = draw(2000)
    t = fit_temperature(logits_from_probabilities(p_val), y_val)
    assert t > 1.5
    for p, y in ((p_val, y_val), (p_new, y_new)):
        after = calibrated(p, t)
        assert expected_calibration_error(after, y) < expected_calibration_error(p, y) / 2
        assert np.array_equal(after.argmax(axis=1), p.argmax(axis=1))
    assert calibrated(p_val, 1.0) is p_val  # models saved before calibration: unchanged
