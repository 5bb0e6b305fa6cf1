"""The brain-plane classifier: a small from-scratch CNN or a fixed Gabor bank with a learned
read-out; augmentation, training of the Gabor read-out, scores and test-time augmentation.

Plane labels are those of FETAL_PLANES_DB (Burgos-Artizzu et al. 2020, Sci Rep 10:10200).
Keras is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stages.common.ml.calibration import logits_from_probabilities, softmax
from stages.common.ml.metrics import log_loss
from stages.common.ml.training import class_weights
from stages.ultrasound.crops import PLANES


def augmentation(augment: dict[str, Any] | None, seed: int = 0) -> list[Any]:
    """Keras augmentation layers (active only in training) from the ``augment`` params.

    ``shift`` (fraction of the side), ``rotation_deg``, ``zoom`` (fraction), ``flip``
    (``horizontal``, ``vertical`` or ``horizontal_and_vertical``), ``brightness`` (fraction of
    the [0, 1] range), ``contrast`` (factor); None or zeros turn a transform off. The crop puts
    the skull's long axis horizontal with the image's top kept on top, so a left-right mirror is
    the same plane (the posterior fossa may lie at either end); an up-down mirror swaps the near
    and far hemispheres, which look different in ultrasound.
    """
    from keras import layers

    aug = augment or {}
    out: list[Any] = []
    if aug.get("flip"):
        out.append(layers.RandomFlip(aug["flip"], seed=seed))
    if aug.get("rotation_deg"):
        out.append(
            layers.RandomRotation(aug["rotation_deg"] / 360.0, fill_mode="constant", seed=seed)
        )
    if aug.get("shift"):
        out.append(
            layers.RandomTranslation(aug["shift"], aug["shift"], fill_mode="constant", seed=seed)
        )
    if aug.get("zoom"):
        out.append(layers.RandomZoom(aug["zoom"], fill_mode="constant", seed=seed))
    if aug.get("brightness"):
        out.append(layers.RandomBrightness(aug["brightness"], value_range=(0.0, 1.0), seed=seed))
    if aug.get("contrast"):
        out.append(layers.RandomContrast(aug["contrast"], seed=seed))
    return out


def build_plane_classifier(
    input_size: int,
    n_classes: int = len(PLANES),
    filters: Sequence[int] = (16, 32, 64, 128),
    dropout: float = 0.3,
    learning_rate: float = 1e-3,
    augment: dict[str, float] | None = None,
    batch_norm: bool = True,
    seed: int = 0,
    label_smoothing: float = 0.0,
    standardize: bool = False,
    frontend: str = "learned",
    gabor: dict[str, Any] | None = None,
    l2: float = 0.0,
) -> Any:
    """A small from-scratch CNN for the brain plane.

    ``frontend`` chooses the convolutional front-end:

    - ``learned``: blocks of 3x3 convolution, (optional) batch normalisation, ReLU and 2x2 max
      pooling, then global average pooling, dropout and a softmax head; the augmentation layers
      (:func:`augmentation`) are part of the network and run only in training.
    - ``gabor``: a fixed complex Gabor filter bank whose log mean magnitude is pooled on coarse
      grids (:class:`stages.ultrasound.planes.gabor.GaborGrid`, sub-model ``frontend``), then a
      learned ``head`` sub-model: feature standardisation, dropout and an L2-regularised softmax
      layer (a multinomial logistic read-out). Train it with :func:`fit_gabor_classifier`: the
      front-end has no weights, so its features are computed once per (augmented) image.

    Parameters
    ----------
    input_size
        Side of the square grayscale input in pixels (``gabor``: divisible by every grid size).
    n_classes
        Number of planes.
    filters
        Channels of the convolution blocks (``learned``).
    dropout
        Dropout rate before the softmax layer.
    learning_rate
        Adam step size.
    augment
        Augmentation params (:func:`augmentation`); ``learned`` only, ``gabor`` augments the
        training images before the features are computed.
    batch_norm
        ``learned``: batch normalisation after each convolution. On ~110 real crops in batches of
        16 it made inference swing from epoch to epoch (validation accuracy 0.16-0.52, often one
        plane for every image); params.yaml turns it off.
    seed
        Seed of the augmentation and dropout layers.
    label_smoothing
        Cross-entropy label smoothing (0 = off).
    standardize
        ``learned``: standardise each image (zero mean, unit variance over its pixels) inside
        the network, after augmentation.
    frontend
        ``learned`` or ``gabor``.
    gabor
        ``frequencies`` (cycles/pixel), ``orientations``, ``grids`` of the Gabor front-end.
    l2
        L2 penalty on the softmax layer's weights (``gabor``).

    Returns
    -------
    keras.Model
        Input (S, S, 1) in [0, 1], output class probabilities; compiled with categorical
        cross-entropy and accuracy.
    """
    import keras
    from keras import layers

    image = keras.Input((input_size, input_size, 1), name="image")
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    if frontend == "gabor":
        from stages.ultrasound.planes.gabor import GaborGrid, feature_count

        g = gabor or {}
        freqs, n_or, grids = (
            g.get("frequencies", (0.1, 0.2, 0.3)),
            g.get("orientations", 6),
            g.get("grids", (4, 8)),
        )
        bad = [k for k in grids if input_size % int(k)]
        if bad:
            raise ValueError(f"input_size {input_size} is not divisible by the Gabor grids {bad}")
        front = keras.Sequential(
            [
                keras.Input((input_size, input_size, 1)),
                GaborGrid(freqs, n_or, grids, pyramid=bool(g.get("pyramid", False))),
            ],
            name="frontend",
        )
        n_feat = feature_count(freqs, n_or, grids)
        feats = keras.Input((n_feat,), name="features")
        h = layers.Normalization(name="standardize")(feats)
        h = layers.Dropout(dropout, seed=seed)(h)
        probs = layers.Dense(
            n_classes,
            activation="softmax",
            kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
            name="plane",
        )(h)
        head = keras.Model(feats, probs, name="head")
        head.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"]
        )
        model = keras.Model(image, head(front(image)), name="us_plane_classifier")
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"]
        )
        return model
    if frontend != "learned":
        raise ValueError(f"unknown plane classifier frontend {frontend!r} (gabor | learned)")
    x = image
    for layer in augmentation(augment, seed):
        x = layer(x)
    if standardize:
        # Per-image standardisation as a built-in (serialisable) layer: no scale, no shift.
        x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False)(x)
    for f in filters:
        x = layers.Conv2D(f, 3, padding="same", use_bias=not batch_norm)(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout, seed=seed)(x)
    out = layers.Dense(n_classes, activation="softmax", name="plane")(x)
    model = keras.Model(image, out, name="us_plane_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=loss,
        metrics=["accuracy"],
    )
    return model


def augmented_copies(
    x: np.ndarray, n_copies: int, augment: dict[str, Any] | None, seed: int
) -> np.ndarray:
    """``x`` (N, S, S, 1) followed by ``n_copies`` randomly augmented copies of it.

    The copies come from the same Keras augmentation layers the learned CNN uses
    (:func:`augmentation`), called in training mode with a seeded generator.
    """
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
    epochs: int,
    batch_size: int,
    n_copies: int = 0,
    augment: dict[str, Any] | None = None,
    seed: int = 0,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Train the ``head`` of a ``gabor`` plane classifier on front-end features.

    The front-end is fixed, so the features of the training images and of ``n_copies``
    augmented copies of each are computed once; the standardisation layer is adapted to them
    and the softmax layer is fitted with balanced class weights. Returns the Keras history.
    """
    import keras

    n = len(PLANES)
    front, head = model.get_layer("frontend"), model.get_layer("head")

    def feats(images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [np.asarray(front(images[i : i + 64])) for i in range(0, len(images), 64)]
        )

    xa = augmented_copies(x, n_copies, augment, seed)
    ya = np.tile(np.asarray(y, dtype=int), len(xa) // max(len(x), 1))
    f_train = feats(xa)
    head.get_layer("standardize").adapt(f_train)
    validation = None
    if x_val is not None and y_val is not None and len(x_val):
        validation = (feats(x_val), keras.utils.to_categorical(y_val, n))
    hist = head.fit(
        f_train,
        keras.utils.to_categorical(ya, n),
        validation_data=validation,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
        class_weight=class_weights(ya, n),
    )
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


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


def predict_planes(model: Any, x: np.ndarray, tta: bool | str = False) -> np.ndarray:
    """Plane probabilities (N, 3) for crops (N, S, S, 1) in [0, 1].

    ``tta`` (test-time augmentation) averages the probabilities over views of each crop:
    ``horizontal`` = the crop and its left-right mirror (the same plane, see
    :func:`augmentation`), ``all`` = also the up-down mirrors, ``none``/False = the crop only;
    True means ``all`` (models saved before the option).
    """
    if len(x) == 0:
        return np.zeros((0, len(PLANES)), dtype=np.float32)
    mode = {True: "all", False: "none"}.get(tta, tta) if isinstance(tta, bool) else str(tta)
    if mode not in TTA_VIEWS:
        raise ValueError(f"unknown tta {tta!r} ({' | '.join(TTA_VIEWS)})")

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
    (fitted on validation images by ``train_plane_classifier_us``). 1 = unchanged (models saved
    before calibration); above 1 softens over-confident probabilities. The argmax never moves.
    """
    if float(temperature) == 1.0 or len(prob) == 0:
        return prob
    return softmax(logits_from_probabilities(prob), float(temperature)).astype(np.float32)
