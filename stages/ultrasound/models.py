"""Keras models for brain ultrasound: a convolutional autoencoder and a small plane classifier.

Both are built from params (no hub weights: everything is trained from scratch on the brain
crops), saved as ``model.keras`` + ``config.json`` (nothing pickled) and loaded back with
:func:`load_model_dir`. Keras is imported inside the functions: importing this module stays
cheap and never touches TensorFlow.

References
----------
The autoencoder mirrors the original project's design (conv 32-64-128 with max pooling, a
mirrored up-sampling decoder, MSE loss); the plane labels are those of FETAL_PLANES_DB
(Burgos-Artizzu et al. 2020, Sci Rep 10:10200).
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.metrics import log_loss
from stages.ultrasound.segment import CROP_MARGIN
from stages.ultrasound.split_planes import image_stem

PLANES: tuple[str, ...] = ("Trans-thalamic", "Trans-cerebellum", "Trans-ventricular")
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
LATENT_FILE = "latent.npz"  # the training codes' Gaussian (latent anomaly score); plain arrays
BOTTLENECK = "bottleneck"
# The head segmenter inside a plane classifier's or autoencoder's folder (bundle_segmenter)
SEGMENTER_DIR = "segmenter"
# What the registered pyfunc needs besides mlflow itself (the stage code ships with it).
PIP_REQUIREMENTS = [
    "keras==3.15.1",
    "tensorflow-cpu==2.21.0",
    "numpy",
    "pandas",
    "scipy",
    "scikit-image",
    "pillow",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic (same seed, same model)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def to_unit_float(images_u8: np.ndarray, size: int) -> np.ndarray:
    """uint8 images (N, H, W) -> float32 (N, size, size, 1) in [0, 1] (bilinear resize if needed).

    Parameters
    ----------
    images_u8
        Gray-level images, 0-255, all the same shape.
    size
        Network input side in pixels.
    """
    x = np.asarray(images_u8)
    if x.ndim == 2:
        x = x[None]
    x = x.astype(np.float32) / 255.0
    if x.shape[1:3] != (size, size):
        from skimage.transform import resize

        x = np.stack(
            [resize(im, (size, size), order=1, anti_aliasing=True, preserve_range=True) for im in x]
        ).astype(np.float32)
    return x[..., None]


def plane_one_hot(planes: Sequence[str], names: Sequence[str] = PLANES) -> np.ndarray:
    """One-hot (N, len(names)) float32 rows for plane names; unknown names raise KeyError."""
    index = {p: i for i, p in enumerate(names)}
    out = np.zeros((len(planes), len(names)), dtype=np.float32)
    for row, plane in enumerate(planes):
        out[row, index[plane]] = 1.0
    return out


def build_autoencoder(
    input_size: int,
    filters: Sequence[int] = (32, 64, 128),
    n_planes: int = len(PLANES),
    plane_embedding: int = 8,
    learning_rate: float = 1e-3,
) -> Any:
    """Convolutional autoencoder conditioned on the brain plane.

    Encoder: for each of ``filters`` a 3x3 ReLU convolution and 2x2 max pooling; decoder: the
    mirror (3x3 convolution then 2x2 up-sampling), a sigmoid 3x3 convolution back to one channel.
    The plane (one-hot) enters at the bottleneck as ``plane_embedding`` extra channels tiled over
    the feature map, so one network learns the three planes' appearance without three small
    training sets.

    Parameters
    ----------
    input_size
        Side of the square grayscale input in pixels; must be divisible by ``2**len(filters)``.
    filters
        Encoder channel counts (the decoder uses them reversed).
    n_planes
        Length of the one-hot plane input.
    plane_embedding
        Channels of the tiled plane code.
    learning_rate
        Adam step size.

    Returns
    -------
    keras.Model
        Inputs ``{"image": (S, S, 1) in [0, 1], "plane": (n_planes,)}``, output (S, S, 1); compiled
        with MSE.
    """
    import keras
    from keras import layers

    scale = 2 ** len(filters)
    if input_size % scale:
        raise ValueError(f"input_size {input_size} must be divisible by {scale}")
    image = keras.Input((input_size, input_size, 1), name="image")
    plane = keras.Input((n_planes,), name="plane")
    x = image
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        # The last pooling is the bottleneck (named: the latent anomaly score reads it).
        x = layers.MaxPooling2D(2, name=BOTTLENECK if i == len(filters) - 1 else None)(x)
    side = input_size // scale
    code = layers.Dense(plane_embedding, activation="relu")(plane)
    code = layers.Reshape((1, 1, plane_embedding))(code)
    code = layers.UpSampling2D(size=(side, side))(code)
    x = layers.Concatenate()([x, code])
    for f in reversed(filters):
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.UpSampling2D(2)(x)
    out = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="reconstruction")(x)
    model = keras.Model({"image": image, "plane": plane}, out, name="us_brain_autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return model


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
      grids (:class:`stages.ultrasound.gabor.GaborGrid`, sub-model ``frontend``), then a learned
      ``head`` sub-model: feature standardisation, dropout and an L2-regularised softmax layer
      (a multinomial logistic read-out). Train it with :func:`fit_gabor_classifier`: the
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
        from stages.ultrasound.gabor import GaborGrid, feature_count

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


def build_unet(
    input_hw: Sequence[int],
    filters: Sequence[int] = (8, 16, 32, 64),
    batch_norm: bool = True,
    learning_rate: float = 1e-3,
    dice_weight: float = 1.0,
) -> Any:
    """A small U-Net for the cranium (filled skull ellipse) as a per-pixel probability.

    Each encoder level is two 3x3 convolutions (optional batch normalisation, ReLU) followed by
    2x2 max pooling; the last entry of ``filters`` is the bottleneck; each decoder level
    up-samples by 2 (bilinear), concatenates the encoder features of the same size (the skip
    connection) and applies two 3x3 convolutions; a 1x1 sigmoid convolution gives the
    probability. Trained from scratch: no hub weights.

    Parameters
    ----------
    input_hw
        (rows, cols) of the grayscale input; both divisible by ``2 ** (len(filters) - 1)``.
    filters
        Channels per level, the last one the bottleneck's.
    batch_norm
        Batch normalisation after each convolution.
    learning_rate
        Adam step size.
    dice_weight
        Weight of the soft Dice loss added to the binary cross-entropy: cross-entropy alone
        is dominated by the easy background pixels far from the outline.

    Returns
    -------
    keras.Model
        Input (H, W, 1) in [0, 1], output (H, W, 1) cranium probability.

    References
    ----------
    Ronneberger O, Fischer P, Brox T. U-Net: convolutional networks for biomedical image
    segmentation. MICCAI 2015.
    """
    import keras
    from keras import layers, ops

    h, w = (int(v) for v in input_hw)
    scale = 2 ** (len(filters) - 1)
    if h % scale or w % scale:
        raise ValueError(f"input {h}x{w} must be divisible by {scale}")

    def block(x: Any, f: int) -> Any:
        for _ in range(2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=not batch_norm)(x)
            if batch_norm:
                x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        return x

    image = keras.Input((h, w, 1), name="image")
    x, skips = image, []
    for f in filters[:-1]:
        x = block(x, f)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, filters[-1])
    for f, skip in zip(reversed(filters[:-1]), reversed(skips), strict=True):
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = block(layers.Concatenate()([x, skip]), f)
    out = layers.Conv2D(1, 1, activation="sigmoid", name="cranium")(x)
    model = keras.Model(image, out, name="us_head_segmenter")

    def bce_dice(y_true: Any, y_pred: Any) -> Any:
        bce = ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
        inter = ops.sum(y_true * y_pred, axis=(1, 2, 3))
        total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
        soft_dice = (2.0 * inter + 1.0) / (total + 1.0)
        return bce + dice_weight * ops.mean(1.0 - soft_dice)

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=bce_dice)
    return model


def predict_masks(model: Any, x: np.ndarray, batch: int = 16) -> np.ndarray:
    """Cranium probabilities (N, H, W) float32 of a U-Net for images (N, H, W, 1) in [0, 1]."""
    if len(x) == 0:
        return np.zeros(x.shape[:3], dtype=np.float32)
    # predict_on_batch runs a compiled graph: ~11 ms for one 160 x 224 image where the eager
    # call (model(x)) takes ~45 ms, most of it per-layer Python overhead; no tf.data pipeline
    # either, unlike model.predict.
    return np.concatenate(
        [np.asarray(model.predict_on_batch(x[i : i + batch])) for i in range(0, len(x), batch)]
    )[..., 0].astype(np.float32)


def class_weights(labels: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (k * count)``; a class with no example gets weight 0."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
    n = counts.sum()
    return {i: (n / (n_classes * c) if c else 0.0) for i, c in enumerate(counts)}


def reconstruct(model: Any, x: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Autoencoder output (N, S, S, 1) for [0, 1] images and one-hot planes (batched calls)."""
    if len(x) == 0:
        return np.zeros_like(x)
    # predict_on_batch: a compiled graph without model.predict's tf.data pipeline (see
    # predict_masks); the eager call spends most of its time in per-layer Python overhead.
    return np.concatenate(
        [
            np.asarray(
                model.predict_on_batch({"image": x[i : i + 64], "plane": planes[i : i + 64]})
            )
            for i in range(0, len(x), 64)
        ]
    )


def reconstruction_mse(model: Any, x: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Per-image mean squared reconstruction error (N,) of an autoencoder on [0, 1] images."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.float32)
    return np.mean((reconstruct(model, x, planes) - x) ** 2, axis=(1, 2, 3)).astype(np.float32)


def anomaly_score(x: np.ndarray, recon: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Normalised reconstruction error: per-image MSE / (variance of the image + ``eps``).

    Plain MSE rewards images that are simply easy to reconstruct: a blank or nearly flat frame
    scored as the *most* normal image in our evaluation (AUROC 0 for blank frames). Dividing by
    the image's own variance makes the score scale-free, so a flat frame that the autoencoder
    turns into a textured head scores high. ``eps`` (in [0, 1]-intensity variance units) keeps
    exactly constant images finite.
    """
    mse = np.mean((recon - x) ** 2, axis=(1, 2, 3))
    return (mse / (np.var(x, axis=(1, 2, 3)) + eps)).astype(np.float32)


# ----------------------------------------------------------------- synthetic corruptions
# Honest anomaly proxies (FETAL_PLANES_DB has no anomaly labels): evaluate_us applies them to
# the test crops, train_autoencoder_us to the val crops for its promotion metric.


def occlude(x: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """A black square of ``occlusion_frac`` of the side at a random place (shadowing, a hand)."""
    out = x.copy()
    n, h, w = x.shape
    side = max(1, int(round(p["occlusion_frac"] * min(h, w))))
    for i in range(n):
        r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out[i, r : r + side, c : c + side] = 0
    return out


def add_noise(x: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """Additive Gaussian noise of ``noise_std`` (fraction of the 0-255 range)."""
    noisy = x.astype(np.float64) + rng.normal(0, 255 * p["noise_std"], x.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def blank(x: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """Every pixel at the image's mean grey (a frozen or disconnected probe)."""
    return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).round().astype(np.uint8)


def invert(x: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """Negative image (255 - x)."""
    return (255 - x).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator, dict[str, Any]], np.ndarray]] = {
    "occlusion": occlude,
    "noise": add_noise,
    "blank": blank,
    "inverted": invert,
}


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def latent_codes(model: Any, x: np.ndarray) -> np.ndarray:
    """Bottleneck summary (N, 2C) of an autoencoder: per-channel mean and std over positions.

    The encoder never sees the plane, so the code does not depend on the plane classifier.
    Pooling over positions keeps the code short (2 x 128 for 32-64-128 filters) next to ~100
    training images, and makes it insensitive to where in the crop a structure sits.
    """
    encoder = _ENCODERS.get(model)
    if encoder is None:
        import keras

        # Built once per model: a sub-model sharing the autoencoder's layers and weights.
        encoder = keras.Model(model.get_layer("image").output, model.get_layer(BOTTLENECK).output)
        _ENCODERS[model] = encoder
    if len(x) == 0:
        return np.zeros((0, 2 * encoder.output.shape[-1]), dtype=np.float32)
    feats = np.concatenate(
        [np.asarray(encoder.predict_on_batch(x[i : i + 64])) for i in range(0, len(x), 64)]
    )
    return np.concatenate([feats.mean(axis=(1, 2)), feats.std(axis=(1, 2))], axis=1).astype(
        np.float32
    )


def fit_gaussian(codes: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision matrix of ``codes`` (N, D) with shrinkage towards a scaled identity.

    ``cov = (1 - shrinkage) * S + shrinkage * trace(S) / D * I`` (S the sample covariance):
    with ~100 codes of 256 dimensions S is singular, the shrunk matrix is not (Ledoit & Wolf
    2004 use the same target; here the weight is a parameter).
    """
    codes = np.asarray(codes, dtype=np.float64)
    d = codes.shape[1]
    # One code has no spread: its covariance is zero and the identity target alone remains.
    cov = np.cov(codes, rowvar=False).reshape(d, d) if len(codes) > 1 else np.zeros((d, d))
    target = np.trace(cov) / d if np.trace(cov) > 0 else 1.0
    cov = (1.0 - shrinkage) * cov + shrinkage * target * np.eye(d)
    return codes.mean(axis=0), np.linalg.inv(cov)


def mahalanobis(codes: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance (N,) of each code to a Gaussian (``mean``, ``precision``)."""
    diff = np.asarray(codes, dtype=np.float64) - mean
    sq = np.einsum("ij,jk,ik->i", diff, precision, diff)
    return np.sqrt(np.maximum(sq, 0.0)).astype(np.float32)


def ring_contrast(x: np.ndarray, margin: float = CROP_MARGIN, n_points: int = 96) -> np.ndarray:
    """Skull-ring contrast (N,) of head crops (N, S, S, 1) in [0, 1].

    ``stages.ultrasound.segment.brain_crop`` maps the skull ellipse onto the circle of radius
    ``S / (2 * margin)`` about the crop's centre. The contrast is the mean brightness on two
    circles just inside that outline (0.94 and 0.97 of its radius: the skull echo) minus the
    mean of the band just outside (1.06, 1.09) and of the brain further in (0.70, 0.76). A head
    has a bright skull between darker tissue and brain; a frame of another anatomy, where the
    segmentation fitted an ellipse to whatever edges it found, has not. Sampled with bilinear
    interpolation at ``n_points`` angles.
    """
    from scipy.ndimage import map_coordinates

    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4:
        x = x[..., 0]
    if len(x) == 0:
        return np.zeros(0, dtype=np.float32)
    side = x.shape[1]
    centre, radius = (side - 1) / 2.0, side / (2.0 * margin)
    t = np.linspace(0.0, 2 * np.pi, n_points, endpoint=False)

    def band(*fractions: float) -> np.ndarray:
        means = []
        for f in fractions:
            rows, cols = centre + np.sin(t) * radius * f, centre + np.cos(t) * radius * f
            means.append(
                [map_coordinates(im, [rows, cols], order=1, mode="nearest").mean() for im in x]
            )
        return np.mean(means, axis=0)

    skull, outside, brain = band(0.94, 0.97), band(1.06, 1.09), band(0.70, 0.76)
    return (skull - 0.5 * (outside + brain)).astype(np.float32)


def fit_latent_ring(codes: np.ndarray, x: np.ndarray, shrinkage: float) -> dict[str, np.ndarray]:
    """What the ``latent_ring`` score needs, from the training crops ``x`` and their codes.

    The Gaussian of the codes (:func:`fit_gaussian`) and the mean and standard deviation of
    the training crops' own Mahalanobis distances and ring contrasts, which put both parts of
    the score on the same scale (standard deviations of normal brain crops), so neither is
    weighted by hand.
    """
    mean, precision = fit_gaussian(codes, shrinkage)
    dist = mahalanobis(codes, mean, precision)
    ring = ring_contrast(x)
    return {
        "mean": mean,
        "precision": precision,
        "dist_mean": np.float64(dist.mean()),
        "dist_std": np.float64(max(dist.std(), 1e-6)),
        "ring_mean": np.float64(ring.mean()),
        "ring_std": np.float64(max(ring.std(), 1e-6)),
    }


def _score_mse(model: Any, x: np.ndarray, planes: np.ndarray, latent: dict) -> np.ndarray:
    return reconstruction_mse(model, x, planes)


def _score_normalised_mse(
    model: Any, x: np.ndarray, planes: np.ndarray, latent: dict
) -> np.ndarray:
    return anomaly_score(x, reconstruct(model, x, planes))


def _score_latent_mahalanobis(
    model: Any, x: np.ndarray, planes: np.ndarray, latent: dict
) -> np.ndarray:
    return mahalanobis(latent_codes(model, x), latent["mean"], latent["precision"])


def latent_ring_parts(model: Any, x: np.ndarray, latent: dict) -> tuple[np.ndarray, np.ndarray]:
    """The two raw parts of the ``latent_ring`` score of crops ``x`` (N, S, S, 1) in [0, 1]:
    the Mahalanobis distance (N,) of each code to the training codes' Gaussian, and the
    skull-ring contrast (N,) (:func:`ring_contrast`). The score and ``evaluate_us``'s per-part
    AUROCs both read them from here."""
    dist = mahalanobis(latent_codes(model, x), latent["mean"], latent["precision"])
    return dist, ring_contrast(x)


def _score_latent_ring(model: Any, x: np.ndarray, planes: np.ndarray, latent: dict) -> np.ndarray:
    dist, ring = latent_ring_parts(model, x, latent)
    z_dist = (dist - float(latent["dist_mean"])) / float(latent["dist_std"])
    # One-sided: a skull ring brighter than usual is no sign of an abnormal frame.
    z_ring = np.maximum(0.0, (float(latent["ring_mean"]) - ring) / float(latent["ring_std"]))
    return (z_dist + z_ring).astype(np.float32)


# Anomaly scores of the autoencoder, by the name ``train_autoencoder_us.anomaly_score`` uses.
# ``mse``: raw reconstruction error (rewards dark, smooth frames: non-brain AUROC ~0.4, blank 0);
# ``normalised_mse``: MSE / image variance (blank frames fixed, non-brain still ~0.4);
# ``latent_mahalanobis``: distance of the bottleneck code to the training brain codes (the
# feature-space Mahalanobis detector of Lee et al. 2018, NeurIPS, on the autoencoder's encoder);
# non-brain AUROC 0.91 on the same model; ``latent_ring``: that distance plus the shortfall of
# the crop's skull-ring contrast (:func:`ring_contrast`), each in standard deviations of the
# training brain crops (see README, anomaly score).
ANOMALY_SCORES = {
    "mse": _score_mse,
    "normalised_mse": _score_normalised_mse,
    "latent_mahalanobis": _score_latent_mahalanobis,
    "latent_ring": _score_latent_ring,
}
# Scores that need the training codes' statistics (``latent.npz``).
LATENT_SCORES = ("latent_mahalanobis", "latent_ring")


def score_anomaly(
    kind: str,
    model: Any,
    x: np.ndarray,
    planes: np.ndarray,
    latent: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Anomaly score (N,) named ``kind`` (see :data:`ANOMALY_SCORES`), higher = more unusual.

    Parameters
    ----------
    kind
        A key of :data:`ANOMALY_SCORES`.
    model
        The autoencoder.
    x
        Crops (N, S, S, 1) in [0, 1].
    planes
        One-hot planes (N, 3) (the latent score ignores them: the encoder never sees them).
    latent
        ``mean`` and ``precision`` of the training codes (:func:`fit_gaussian`); latent score only.
    """
    if len(x) == 0:
        return np.zeros(0, dtype=np.float32)
    return ANOMALY_SCORES[kind](model, x, planes, latent or {}).astype(np.float32)


def save_model_dir(
    model: Any,
    folder: Path,
    config: dict[str, Any],
    arrays: dict[str, np.ndarray] | None = None,
) -> None:
    """Write ``model.keras``, ``config.json`` (threshold, input size, ...) and, when given,
    ``arrays`` as ``latent.npz`` (plain arrays, read back without pickle) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    with open(folder / CONFIG_FILE, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
    if arrays:
        np.savez(folder / LATENT_FILE, **arrays)


def bundle_segmenter(model_dir: Path, segment_params: dict[str, Any], segmenter: Path) -> None:
    """Copy the head segmenter ``segmenter`` into ``model_dir`` when the crops needed it.

    A model trained on crops made with ``segment_us.method: unet`` must crop new images with
    the same U-Net. Carrying it inside the model folder (``segmenter/``) makes the folder and
    the registered pyfunc (whose artifact is the folder) self-contained: no path into the
    project that made it, and no registry version of the segmenter that could drift from the
    one the crops came from. With another method nothing is copied.
    """
    import shutil

    if segment_params.get("method") != "unet":
        return
    if not (Path(segmenter) / MODEL_FILE).is_file():
        raise FileNotFoundError(f"no head segmenter at {segmenter} (run train_segmenter_us)")
    shutil.copytree(segmenter, Path(model_dir) / SEGMENTER_DIR)


def load_arrays(folder: str | Path) -> dict[str, np.ndarray]:
    """The ``latent.npz`` arrays of a model folder ({} when it has none)."""
    path = Path(folder) / LATENT_FILE
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_model_dir(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load ``model.keras`` (without the optimizer state) and ``config.json`` from ``folder``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    import stages.ultrasound.gabor  # noqa: F401  (registers the GaborGrid layer for loading)

    folder = Path(folder)
    with open(folder / CONFIG_FILE, encoding="utf-8") as fh:
        config = json.load(fh)
    model = keras.models.load_model(folder / MODEL_FILE, compile=False)
    return model, config


def crops_for(manifest: pd.DataFrame, names: Sequence[str], images: np.ndarray) -> np.ndarray:
    """The crops (len(manifest), S, S) of the manifest's ``image`` rows, matched by file stem.

    Raises KeyError naming the manifest images that have no crop.
    """
    index = {image_stem(n): i for i, n in enumerate(names)}
    missing = [im for im in manifest["image"] if image_stem(im) not in index]
    if missing:
        raise KeyError(f"{len(missing)} manifest images have no crop, e.g. {missing[:5]}")
    rows = [index[image_stem(im)] for im in manifest["image"]]
    return np.asarray(images)[rows]


def brain_rows(manifest: pd.DataFrame, split: str, planes: Sequence[str] = PLANES) -> pd.DataFrame:
    """Manifest rows of one split whose brain plane is one of ``planes``."""
    keep = manifest["is_brain"].astype(bool) & manifest["brain_plane"].isin(list(planes))
    return manifest[keep & manifest["split"].eq(split)].reset_index(drop=True)


def epoch_timer() -> tuple[Any, list[float]]:
    """A Keras callback recording each epoch's wall time (s) into the returned list."""
    import time

    import keras

    times: list[float] = []

    class _Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self._t0)

    return _Timer(), times


def publish(
    model_dir: Path,
    loader: str,
    registered_name: str,
    metrics: dict[str, float],
    promote_metric: str,
    promote_margin: float,
    eval_paths: list[Path],
    key_parts: dict[str, Any],
    rescore: Callable[[Any], float] | None = None,
) -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc in the active run, register it, promote it if better.

    The version is tagged with every metric and with ``eval_data_hash`` (the inputs it was
    evaluated on); the idempotency key hashes those inputs, the ultrasound stage code and
    ``key_parts`` (the params), so a rerun after a crash reuses the version. A champion whose
    ``eval_data_hash`` differs (the crops changed: new segmentation, enhancement or split) is
    loaded from the registry and ``rescore(its predictor)`` gives its ``promote_metric`` on this
    run's evaluation data (the crops of the current pipeline: the champion is judged on this
    run's inputs, not through its own bundled segmenter). Returns the promotion decision.
    """
    import hashlib

    from stages.common import tracking

    eval_hash = tracking.data_hash(eval_paths)
    # The code is part of the key: retraining with changed code on the same data is a new model.
    code_hash = tracking.data_hash([Path(__file__).parent])
    key = hashlib.sha256(
        (eval_hash + code_hash + json.dumps(key_parts, sort_keys=True, default=str)).encode()
    ).hexdigest()[:24]
    uri = tracking.log_predictor_model(
        name="model",
        loader=loader,
        artifacts={"model_dir": str(model_dir)},
        pip_requirements=PIP_REQUIREMENTS,
    )
    tags = {**{k: f"{v:.6g}" for k, v in metrics.items()}, "eval_data_hash": eval_hash}
    version = tracking.register_model(uri, registered_name, tags, idempotency_key=key)

    def champion_score(model_uri: str) -> float:
        # errors propagate: decide_promotion keeps the champion and says why
        return float(rescore(tracking.load_predictor(model_uri)))

    decision = tracking.promote_if_better(
        registered_name,
        version,
        promote_metric,
        promote_margin,
        rescore=champion_score if rescore is not None else None,
    )
    tracking.set_tags({"registered_version": version, "promoted": decision.promoted})
    return decision.to_dict()


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
