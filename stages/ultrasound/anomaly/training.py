"""Training the autoencoder of brain crops and choosing its anomaly threshold.

Trained on the train split's brain crops only (grayscale, [0, 1]). The anomaly threshold is a
conformal quantile (``target_false_alarm``) of out-of-fold scores of every train and val brain
image, patient-grouped folds over the latent statistics of the one trained encoder
(:mod:`stages.ultrasound.anomaly.threshold`, with its caveat). FETAL_PLANES_DB has no anomaly
labels: the autoencoder flags images unlike its training images (quality, plane or possibly
pathology); it is not a diagnosis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from stages.common.ml.training import epoch_timer, seed_everything
from stages.common.settings import settings
from stages.ultrasound.anomaly.autoencoder import (
    anomaly_scores,
    build_autoencoder,
    fit_latent_ring,
    latent_codes,
    reconstruct,
)
from stages.ultrasound.anomaly.threshold import (
    conformal_quantile,
    out_of_fold_scores,
    patient_folds,
)

log = logging.getLogger(__name__)


@settings
class AutoencoderSettings:
    """The ``train_autoencoder_us`` section (params.yaml comments each key)."""

    seed: int
    filters: tuple[int, ...]
    epochs: int
    batch_size: int
    learning_rate: float
    target_false_alarm: float
    threshold_folds: int
    latent_shrinkage: float


def anomaly_threshold(
    model: Any,
    x: tuple[np.ndarray, np.ndarray],
    latent: dict[str, np.ndarray],
    s: AutoencoderSettings,
    patients: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The threshold (:mod:`stages.ultrasound.anomaly.threshold`) and how it was chosen.

    ``x`` and ``patients`` are (train, val) pairs; without patients each image is its own
    group. Returns ``threshold``, ``threshold_method`` (``oof_conformal``; ``val_conformal``,
    the val scores alone, with fewer than two patients), ``threshold_n`` (scores behind it),
    ``val_flagged_rate`` (the val images flagged by the final model at the threshold: honest
    for the encoder and the Gaussian alike, but ~25 images) and ``val_percentile_threshold``
    (the former rule: that percentile of the val scores alone).
    """
    alpha = s.target_false_alarm
    has_val = len(x[1]) > 0
    final = anomaly_scores(model, x[1] if has_val else x[0], latent)
    method, scores = "val_conformal", final
    x_all = np.concatenate([x[0], x[1]])
    groups = [*patients[0], *patients[1]] if patients else [f"image{i}" for i in range(len(x_all))]
    folds = patient_folds(groups, s.threshold_folds, s.seed)
    if folds is not None:
        scores = out_of_fold_scores(latent_codes(model, x_all), x_all, folds, s.latent_shrinkage)
        method = "oof_conformal"
        log.info(
            "threshold from %d out-of-fold scores (%d of train images)", len(scores), len(x[0])
        )
    threshold = conformal_quantile(scores, alpha)
    return {
        "threshold": threshold,
        "threshold_method": method,
        "threshold_n": len(scores),
        "val_flagged_rate": float(np.mean(final > threshold)) if has_val else float("nan"),
        "val_percentile_threshold": float(np.percentile(final, 100 * (1 - alpha))),
    }


def train_autoencoder(
    x_train: np.ndarray,
    planes_train: np.ndarray,
    x_val: np.ndarray,
    planes_val: np.ndarray,
    s: AutoencoderSettings,
    patients: tuple[Sequence[str], Sequence[str]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the autoencoder and derive its anomaly threshold.

    Parameters
    ----------
    x_train, x_val
        Crops (N, S, S, 1) in [0, 1]; S is the network's input side.
    planes_train, planes_val
        One-hot planes (N, 3).
    s
        The ``train_autoencoder_us`` settings.
    patients
        Patient of each (train, val) image: the groups of the threshold's folds.

    Returns
    -------
    model, result
        The fitted Keras model and ``val_mse`` (mean per-image MSE on val; on train without
        val images), ``train_mse``, the threshold of the anomaly score and how it was chosen
        (:func:`anomaly_threshold`), ``n_train``, ``n_val``, ``epoch_times_s`` and ``latent``
        (the training codes' statistics the score needs).
    """
    seed_everything(s.seed)
    model = build_autoencoder(x_train.shape[1], s.filters, learning_rate=s.learning_rate)
    timer, times = epoch_timer()
    inputs = {"image": x_train, "plane": planes_train}
    model.fit(
        inputs,
        x_train,
        epochs=s.epochs,
        batch_size=s.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[timer],
    )
    train_mse = np.mean((reconstruct(model, x_train, planes_train) - x_train) ** 2)
    # The normal class is the training brain codes (the final statistics: train images only).
    latent = fit_latent_ring(latent_codes(model, x_train), x_train, s.latent_shrinkage)
    x_mse, p_mse = (x_val, planes_val) if len(x_val) else (x_train, planes_train)
    result = {
        "train_mse": float(train_mse),
        "val_mse": float(np.mean((reconstruct(model, x_mse, p_mse) - x_mse) ** 2)),
        **anomaly_threshold(model, (x_train, x_val), latent, s, patients),
        "n_train": len(x_train),
        "n_val": len(x_val),
        "epoch_times_s": [round(t, 3) for t in times],
        "latent": latent,
    }
    return model, result
