"""The brain-plane classifier: a fixed Gabor filter bank with a learned softmax read-out, its
settings, and inference (test-time mirrors, temperature scaling, scores).

Plane labels are those of FETAL_PLANES_DB (Burgos-Artizzu et al. 2020, Sci Rep 10:10200).
Keras is imported inside the functions. Training is in :mod:`stages.ultrasound.planes.training`;
a CNN learned from scratch is a research variant (``experiments/ultrasound/learned_planes.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from stages.common.ml.calibration import logits_from_probabilities, softmax
from stages.common.ml.metrics import log_loss
from stages.common.settings import settings
from stages.ultrasound.crops import PLANES


@settings
class GaborSettings:
    """The filter bank (``train_plane_classifier_us.gabor``): ``frequencies`` (cycles per pixel of
    the crop), ``orientations`` over 180 deg, ``grids`` (cells per side over which each filter's
    energy is averaged), ``pyramid`` (low frequencies at twice the frequency on the half-size
    crop)."""

    frequencies: tuple[float, ...]
    orientations: int
    grids: tuple[int, ...]
    pyramid: bool


@settings
class AugmentSettings:
    """Plane-preserving training transforms (``train_plane_classifier_us.augment``): ``shift``
    (fraction of the side), ``rotation_deg``, ``zoom`` (fraction), ``flip`` (a Keras
    ``RandomFlip`` mode, "" = off), ``brightness`` (fraction of the [0, 1] range), ``contrast``
    (fraction); 0 turns a transform off."""

    shift: float
    rotation_deg: float
    zoom: float
    flip: str
    brightness: float
    contrast: float


@settings
class PlaneClassifierSettings:
    """The ``train_plane_classifier_us`` section (params.yaml comments each key)."""

    seed: int
    gabor: GaborSettings
    dropout: float
    l2: float
    label_smoothing: float
    epochs: int
    batch_size: int
    learning_rate: float
    n_augment: int
    augment: AugmentSettings
    tta: str
    calibration_bins: int


def build_plane_classifier(
    input_size: int, s: PlaneClassifierSettings, n_classes: int = len(PLANES)
) -> Any:
    """The plane classifier: a fixed complex Gabor filter bank whose log mean magnitude is pooled
    on coarse grids (:class:`stages.ultrasound.planes.gabor.GaborGrid`, sub-model
    ``frontend``), then a learned ``head`` sub-model: feature standardisation, dropout and an
    L2-regularised softmax layer (a multinomial logistic read-out). Train it with
    :func:`stages.ultrasound.planes.training.fit_gabor_classifier`: the front-end has no
    weights, so its features are computed once per (augmented) image.

    Parameters
    ----------
    input_size
        Side of the square grayscale input in pixels, divisible by every grid size.
    s
        The settings: ``gabor``, ``dropout`` (before the softmax layer), ``l2`` (penalty on its
        weights, 0 = none), ``label_smoothing``, ``learning_rate`` (Adam), ``seed`` (dropout).
    n_classes
        Number of planes.

    Returns
    -------
    keras.Model
        Input (S, S, 1) in [0, 1], output class probabilities; compiled with categorical
        cross-entropy and accuracy.
    """
    import keras
    from keras import layers

    from stages.ultrasound.planes.gabor import GaborGrid, feature_count

    g = s.gabor
    bad = [k for k in g.grids if input_size % int(k)]
    if bad:
        raise ValueError(f"input_size {input_size} is not divisible by the Gabor grids {bad}")
    image = keras.Input((input_size, input_size, 1), name="image")
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=s.label_smoothing)
    bank = GaborGrid(g.frequencies, g.orientations, g.grids, pyramid=g.pyramid)
    front = keras.Sequential([keras.Input((input_size, input_size, 1)), bank], name="frontend")
    feats = keras.Input((feature_count(g.frequencies, g.orientations, g.grids),), name="features")
    h = layers.Normalization(name="standardize")(feats)
    h = layers.Dropout(s.dropout, seed=s.seed)(h)
    l2 = keras.regularizers.L2(s.l2) if s.l2 else None
    probs = layers.Dense(n_classes, activation="softmax", kernel_regularizer=l2, name="plane")(h)
    head = keras.Model(feats, probs, name="head")
    head.compile(optimizer=keras.optimizers.Adam(s.learning_rate), loss=loss, metrics=["accuracy"])
    model = keras.Model(image, head(front(image)), name="us_plane_classifier")
    model.compile(optimizer=keras.optimizers.Adam(s.learning_rate), loss=loss, metrics=["accuracy"])
    return model


def plane_scores(prob: np.ndarray, y: np.ndarray, eps: float = 1e-7) -> dict[str, float]:
    """``val_accuracy`` and ``val_log_loss_neg`` (minus the mean cross-entropy, higher is better)
    of plane probabilities (N, 3) against plane indices (N,); NaN without images.

    The log-loss is the promotion metric: on ~25 validation images accuracy moves in steps of
    0.04 and ties between versions are common; a proper scoring rule has no ties and rewards
    probabilities that mean what they say.
    """
    y = np.asarray(y, dtype=int)
    if len(y) == 0:
        return {"val_accuracy": float("nan"), "val_log_loss_neg": float("nan")}
    return {
        "val_accuracy": float(np.mean(np.argmax(prob, axis=1) == y)),
        "val_log_loss_neg": -log_loss(y, prob, eps),
    }


TTA_VIEWS: dict[str, tuple[str, ...]] = {
    "none": ("id",),
    "horizontal": ("id", "lr"),
    "all": ("id", "lr", "ud", "both"),
}


def predict_planes(model: Any, x: np.ndarray, tta: str) -> np.ndarray:
    """Plane probabilities (N, 3) for crops (N, S, S, 1) in [0, 1].

    ``tta`` (test-time augmentation) averages the probabilities over views of each crop:
    ``horizontal`` = the crop and its left-right mirror (the same plane, see
    :func:`stages.ultrasound.planes.training.augmentation`), ``all`` = also the up-down
    mirrors, ``none`` = the crop only.
    """
    if tta not in TTA_VIEWS:
        raise ValueError(f"unknown tta {tta!r} ({' | '.join(TTA_VIEWS)})")
    if len(x) == 0:
        return np.zeros((0, len(PLANES)), dtype=np.float32)
    mode = tta

    def run(batch: np.ndarray) -> np.ndarray:
        # predict_on_batch: a compiled graph, no tf.data pipeline (model.predict) and no
        # per-layer eager overhead (model(x)); with reconstruct and latent_codes this took
        # score_image from 173 to 56 ms (median, U-Net segmenter, shared machine).
        return np.concatenate(
            [
                np.asarray(model.predict_on_batch(batch[i : i + 64]))
                for i in range(0, len(batch), 64)
            ]
        )

    flips = {
        "id": lambda a: a,
        "lr": lambda a: a[:, :, ::-1],
        "ud": lambda a: a[:, ::-1],
        "both": lambda a: a[:, ::-1, ::-1],
    }
    views = TTA_VIEWS[mode]
    # All views go through the network as one batch: one call instead of several.
    batch = np.concatenate([flips[v](x) for v in views])
    prob = run(batch).reshape(len(views), len(x), -1).mean(axis=0)
    return prob.astype(np.float32)


def calibrated(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Plane probabilities (N, K) after temperature scaling (Guo et al. 2017, ICML).

    ``softmax(log(prob) / temperature)``: the log-probabilities are the logits up to a per-row
    constant, so this is the network's softmax with its logits divided by ``temperature``
    (fitted on validation images by ``train_plane_classifier_us``). 1 = unchanged; above 1
    softens over-confident probabilities. The argmax never moves.
    """
    if float(temperature) == 1.0 or len(prob) == 0:
        return prob
    return softmax(logits_from_probabilities(prob), float(temperature)).astype(np.float32)


def plane_items(rows: pd.DataFrame, y: np.ndarray, prob: np.ndarray) -> pd.DataFrame:
    """A per-image evaluation in the items format of
    :class:`stages.common.registry.promotion.Evaluation`: ``item`` (image), ``cluster``
    (patient), ``y`` (plane index into :data:`PLANES`) and ``pred.0`` .. ``pred.K-1`` (plane
    probabilities (N, K) of the manifest ``rows``)."""
    items = pd.DataFrame(
        {
            "item": [str(i) for i in rows["image"]],
            "cluster": list(rows["patient"].astype(str)),
            "y": np.asarray(y, dtype=int),
        }
    )
    prob = np.asarray(prob, dtype=float).reshape(len(items), -1)
    return items.assign(**{f"pred.{k}": prob[:, k] for k in range(prob.shape[1])})
