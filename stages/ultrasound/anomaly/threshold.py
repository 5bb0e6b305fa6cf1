"""The autoencoder's anomaly threshold: a conformal quantile of out-of-fold scores.

The first threshold was the 95th percentile of 25 validation images' scores; on new normal
brain images of unseen patients it flagged 16 %, not 5 %. Two causes: 25 scores pin a 95th
percentile down poorly (it is the 24th of 25), and nothing corrected for that. Now:

1. **Out-of-fold scores for every train + val brain image.** Patient-grouped folds over
   train + val; for each fold the latent statistics (the codes' Gaussian and the scales of the
   score's two parts: :func:`~stages.ultrasound.anomaly.autoencoder.fit_latent_ring`) are
   fitted on the other folds' codes
   and the held-out fold is scored, so no image's score comes from statistics it helped to fit, and
   a patient's images never score each other. The network is not retrained: every code comes from
   the one trained encoder.
2. **A conformal quantile** (split conformal prediction; Vovk, Gammerman & Shafer 2005;
   Angelopoulos & Bates 2021, arXiv:2107.07511): the ``ceil((n + 1)(1 - a))``-th smallest of
   the n out-of-fold scores, so a new image exchangeable with them exceeds it with
   probability at most ``a`` (``target_false_alarm``).

Caveat: the encoder was trained on the train images, so their codes are more typical than a
new patient's; their out-of-fold scores are honest about the Gaussian, not about the
encoder, and the threshold may still sit low. The val patients' codes are honest for both:
the stage reports the false-alarm rate of the val images at the threshold next to the
target, and ``evaluate_us`` the test split's with a patient-cluster interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from stages.common.ml.splits import stratified_folds
from stages.ultrasound.anomaly.autoencoder import fit_latent_ring, ring_scores_from_codes

log = logging.getLogger(__name__)


def conformal_quantile(scores: np.ndarray, false_alarm: float) -> float:
    """The ``ceil((n + 1)(1 - false_alarm))``-th smallest score (1-based).

    When that rank exceeds n (too few scores for the target), the largest score is returned
    and a warning logged: the target then cannot be guaranteed. NaN without scores.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    if n == 0:
        return float("nan")
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"false_alarm must be in (0, 1), got {false_alarm}")
    rank = math.ceil((n + 1) * (1.0 - false_alarm))
    if rank > n:
        log.warning("%d scores are too few for a false-alarm rate of %g", n, false_alarm)
        rank = n
    return float(s[rank - 1])


def patient_folds(patients: Sequence[str], n_folds: int, seed: int) -> np.ndarray | None:
    """Patient-grouped folds (as many as there are patients, at most ``n_folds``; ``n_folds``
    0 = one fold per patient, leave-one-patient-out), not stratified (the encoder never sees
    the plane, and a small plane may have fewer patients than folds); None with fewer than two
    patients.

    Leave-one-patient-out is the default (``threshold_folds: 0``): each out-of-fold score then
    comes from statistics fitted on nearly all images, as the final model's are. With 5 folds
    each fit saw 80 % of them, its Gaussian was looser around new codes, and the scores, so the
    threshold, came out high (train + val, 2026-11-30: 6.99 with 5 folds, 6.07 leaving one
    patient out, same 5 % target).
    """
    n_patients = len(set(patients))
    k = n_patients if int(n_folds) <= 0 else min(int(n_folds), n_patients)
    if k < 2:
        return None
    ids = [f"{p}:{i}" for i, p in enumerate(patients)]
    return stratified_folds(ids, np.zeros(len(ids), dtype=int), k, seed, groups=list(patients))


def out_of_fold_scores(
    codes: np.ndarray, x: np.ndarray, folds: np.ndarray, shrinkage: float
) -> np.ndarray:
    """Each image's anomaly score under statistics fitted on the other folds only.

    Parameters
    ----------
    codes
        Encoder codes (N, D) of the crops
        (:func:`~stages.ultrasound.anomaly.autoencoder.latent_codes`).
    x
        The crops (N, S, S, 1) in [0, 1] (the ring part reads them).
    folds
        Fold number per image (:func:`patient_folds`).
    shrinkage
        Covariance shrinkage of the Gaussian.
    """
    out = np.full(len(codes), np.nan, dtype=np.float64)
    for f in np.unique(folds):
        held, fit = folds == f, folds != f
        latent = fit_latent_ring(codes[fit], x[fit], shrinkage)
        out[held] = ring_scores_from_codes(codes[held], x[held], latent)
    return out
