"""The plane-conditioned convolutional autoencoder of brain crops and its anomaly score.

Built from params (no hub weights: trained from scratch on the brain crops); Keras is imported
inside the functions. The design mirrors the original project's (conv 32-64-128 with max
pooling, a mirrored up-sampling decoder, MSE loss).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

from stages.ultrasound.crops import PLANES
from stages.ultrasound.head.geometry import CROP_MARGIN

BOTTLENECK = "bottleneck"
# The anomaly score a model folder names in its ``config.json`` (:func:`anomaly_scores`)
ANOMALY_SCORE = "latent_ring"


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

    ``stages.ultrasound.head.geometry.brain_crop`` maps the skull ellipse onto the circle of radius
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


def latent_ring_parts(model: Any, x: np.ndarray, latent: dict) -> tuple[np.ndarray, np.ndarray]:
    """The two raw parts of the ``latent_ring`` score of crops ``x`` (N, S, S, 1) in [0, 1]:
    the Mahalanobis distance (N,) of each code to the training codes' Gaussian, and the
    skull-ring contrast (N,) (:func:`ring_contrast`). The score and ``evaluate_us``'s per-part
    AUROCs both read them from here."""
    dist = mahalanobis(latent_codes(model, x), latent["mean"], latent["precision"])
    return dist, ring_contrast(x)


def _ring_z(dist: np.ndarray, ring: np.ndarray, latent: dict) -> np.ndarray:
    z_dist = (dist - float(latent["dist_mean"])) / float(latent["dist_std"])
    # One-sided: a skull ring brighter than usual is no sign of an abnormal frame.
    z_ring = np.maximum(0.0, (float(latent["ring_mean"]) - ring) / float(latent["ring_std"]))
    return (z_dist + z_ring).astype(np.float32)


def ring_scores_from_codes(codes: np.ndarray, x: np.ndarray, latent: dict) -> np.ndarray:
    """The ``latent_ring`` score of crops ``x`` from their codes (already computed) and the
    training statistics ``latent`` (:func:`fit_latent_ring`), without running the encoder
    again (the threshold's out-of-fold scores)."""
    dist = mahalanobis(codes, latent["mean"], latent["precision"])
    return _ring_z(dist, ring_contrast(x), latent)


def anomaly_scores(model: Any, x: np.ndarray, latent: dict[str, np.ndarray]) -> np.ndarray:
    """The anomaly score :data:`ANOMALY_SCORE` (N,), higher = more unusual, of crops ``x``
    (N, S, S, 1) in [0, 1]: in standard deviations of the training brain crops, the
    Mahalanobis distance of the autoencoder's bottleneck code to the training codes (the
    feature-space detector of Lee et al. 2018, NeurIPS, on the autoencoder's encoder) plus the
    shortfall of the crop's skull-ring contrast (:func:`ring_contrast`). ``latent`` is the
    training crops' statistics (:func:`fit_latent_ring`). The encoder never sees the plane, so
    neither does the score.

    Reconstruction error, raw or divided by the image's variance, rewards images that are
    simply easy to reconstruct (dark, smooth non-brain crops: non-brain AUROC ~0.4) and is a
    research variant (``experiments/ultrasound/anomaly_scores.py``).
    """
    if len(x) == 0:
        return np.zeros(0, dtype=np.float32)
    return _ring_z(*latent_ring_parts(model, x, latent), latent).astype(np.float32)
