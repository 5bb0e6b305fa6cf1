"""What the CTG and ultrasound training stages share: seeding, epoch timing, class weights.

Keras and TensorFlow are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic (same seed, same model)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # an old TF without it: determinism then rests on the seeds
        pass


def epoch_timer() -> tuple[Any, list[float]]:
    """A Keras callback and the list it appends each epoch's wall time (s) to.

    The list keeps growing across ``fit`` calls with the same callback (a loop of one-epoch
    fits is timed as one run).
    """
    import keras

    times: list[float] = []

    class _Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self._t0)

    return _Timer(), times


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (n_classes * count)`` for integer labels ``0..n_classes-1``.

    A class absent from ``labels`` gets weight 1.0: the neutral weight. No example of it is
    in the data the weights were computed on, so its weight never enters that loss (the CTG
    folds and the plane classifier's training sets give the same models with 0.0 or 1.0); but
    were the weights applied to other data holding that class, 1.0 keeps those examples at
    their plain, unbalanced weight, where 0.0 would silently drop them from the loss.
    """
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    n = counts.sum()
    return {i: (float(n / (n_classes * c)) if c else 1.0) for i, c in enumerate(counts)}
