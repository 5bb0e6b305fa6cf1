"""Training the plane classifier: augmented copies, the Gabor read-out's fit and the
temperature that calibrates its probabilities.

The front-end is a fixed filter bank (:class:`stages.ultrasound.planes.gabor.GaborGrid`), so
each training image's features, and those of ``n_augment`` augmented copies of it, are computed
once, and only the softmax read-out is fitted, with balanced class weights. Calibration: the
read-out's probabilities were over-confident (0.99 on a blank frame, 0.9997 for the wrong plane
on a head from another hospital); one temperature (Guo et al. 2017, ICML) is fitted on the
validation images by minimising their log-loss.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from stages.common.ml.calibration import fit_temperature, logits_from_probabilities
from stages.common.ml.training import class_weights, seed_everything
from stages.ultrasound.crops import PLANES
from stages.ultrasound.planes.classifier import (
    AugmentSettings,
    PlaneClassifierSettings,
    build_plane_classifier,
    calibrated,
    plane_scores,
    predict_planes,
)


def augmentation(aug: AugmentSettings, seed: int) -> list[Any]:
    """Keras augmentation layers (active only in training) from the ``augment`` settings.

    ``shift`` (fraction of the side), ``rotation_deg``, ``zoom`` (fraction), ``flip``
    (``horizontal``, ``vertical`` or ``horizontal_and_vertical``), ``brightness`` (fraction of
    the [0, 1] range), ``contrast`` (factor); "" or zeros turn a transform off. The crop puts
    the skull's long axis horizontal with the image's top kept on top, so a left-right mirror is
    the same plane (the posterior fossa may lie at either end); an up-down mirror swaps the near
    and far hemispheres, which look different in ultrasound.
    """
    from keras import layers

    out: list[Any] = []
    if aug.flip:
        out.append(layers.RandomFlip(aug.flip, seed=seed))
    if aug.rotation_deg:
        out.append(layers.RandomRotation(aug.rotation_deg / 360.0, fill_mode="constant", seed=seed))
    if aug.shift:
        out.append(layers.RandomTranslation(aug.shift, aug.shift, fill_mode="constant", seed=seed))
    if aug.zoom:
        out.append(layers.RandomZoom(aug.zoom, fill_mode="constant", seed=seed))
    if aug.brightness:
        out.append(layers.RandomBrightness(aug.brightness, value_range=(0.0, 1.0), seed=seed))
    if aug.contrast:
        out.append(layers.RandomContrast(aug.contrast, seed=seed))
    return out


def augmented_copies(
    x: np.ndarray, n_copies: int, augment: AugmentSettings, seed: int
) -> np.ndarray:
    """``x`` (N, S, S, 1) followed by ``n_copies`` randomly augmented copies of it, from the
    Keras augmentation layers (:func:`augmentation`) called in training mode, seeded."""
    import keras

    layers_ = augmentation(augment, seed)
    if not n_copies or not layers_ or len(x) == 0:
        return x
    aug = keras.Sequential([keras.Input(x.shape[1:]), *layers_])
    copies = [x] + [np.asarray(aug(x, training=True)) for _ in range(int(n_copies))]
    return np.concatenate(copies).astype(np.float32)


def fit_gabor_classifier(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    s: PlaneClassifierSettings,
    x_val: np.ndarray,
    y_val: np.ndarray,
) -> dict[str, list[float]]:
    """Train the ``head`` of a plane classifier (:func:`build_plane_classifier`) on front-end
    features.

    The front-end is fixed, so the features of the training images and of ``s.n_augment``
    augmented copies of each are computed once; the standardisation layer is adapted to them
    and the softmax layer is fitted with balanced class weights for ``s.epochs`` epochs.
    Returns the Keras history (with the val images' loss and accuracy when there are any).
    """
    import keras

    n = len(PLANES)
    front, head = model.get_layer("frontend"), model.get_layer("head")

    def feats(images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [np.asarray(front(images[i : i + 64])) for i in range(0, len(images), 64)]
        )

    xa = augmented_copies(x, s.n_augment, s.augment, s.seed)
    ya = np.tile(np.asarray(y, dtype=int), len(xa) // max(len(x), 1))
    f_train = feats(xa)
    head.get_layer("standardize").adapt(f_train)
    validation = (feats(x_val), keras.utils.to_categorical(y_val, n)) if len(x_val) else None
    return fit_planes(head, f_train, ya, validation, s.epochs, s.batch_size)


def fit_planes(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
    epochs: int,
    batch_size: int,
    callbacks: list[Any] | None = None,
) -> dict[str, list[float]]:
    """Fit a softmax ``model`` on inputs ``x`` and plane indices ``y`` (one-hot encoded here)
    with balanced class weights, shuffled; returns the Keras history as lists."""
    import keras

    n = len(PLANES)
    hist = model.fit(
        x,
        keras.utils.to_categorical(y, n),
        validation_data=validation,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        class_weight=class_weights(y, n),
        callbacks=callbacks,
    )
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def train_plane_classifier(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    s: PlaneClassifierSettings,
) -> tuple[Any, dict[str, Any]]:
    """Build and fit the plane classifier on crops (N, S, S, 1) in [0, 1] with plane indices
    into :data:`~stages.ultrasound.crops.PLANES`.

    Returns the Keras model and ``val_accuracy``, ``val_log_loss_neg`` (uncalibrated, with the
    settings' test-time mirrors), ``best_epoch`` (the last: every epoch is kept),
    ``epochs_run``, ``n_train``, ``n_val``, ``epoch_times_s`` (the read-out's fit time spread
    over its epochs) and ``history`` (per-epoch loss/accuracy lists).
    """
    seed_everything(s.seed)
    model = build_plane_classifier(x_train.shape[1], s)
    t0 = time.perf_counter()
    history = fit_gabor_classifier(model, x_train, y_train, s, x_val, y_val)
    times = [(time.perf_counter() - t0) / max(s.epochs, 1)] * s.epochs
    scores = plane_scores(predict_planes(model, x_val, s.tta), y_val)
    return model, {
        **scores,
        "best_epoch": len(times),
        "epochs_run": len(times),
        "n_train": len(x_train),
        "n_val": len(x_val),
        "epoch_times_s": times,
        "history": history,
    }


def fit_calibration(prob: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """The temperature that minimises the log-loss of plane probabilities ``prob`` (N, K) on
    their true planes ``y`` (1 without images) and the probabilities it scales."""
    y = np.asarray(y, dtype=int)
    temperature = fit_temperature(logits_from_probabilities(prob), y) if len(y) else 1.0
    return temperature, calibrated(prob, temperature)
