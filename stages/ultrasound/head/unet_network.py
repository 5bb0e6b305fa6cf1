"""The U-Net of both stages of the head segmenter, its two losses and batched prediction.

* Coarse: the U-Net at a low input size (``train_segmenter_us.coarse``) gives the cranium
  probability; an ellipse is fitted to its 0.5 contour (:mod:`.coarse_to_fine`).
* Fine: the same trunk on the polar unwrap around the coarse ellipse (:mod:`.polar`,
  ``n_radii`` x ``n_angles`` plus ``wrap_px`` columns wrapped round on each side); its logits
  are normalised over the radius of each column (:func:`ray_loss`): a distribution of where the
  outline lies along that ray.

Keras and TensorFlow are imported inside the functions (a stage that never trains does not pay
for them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def build_unet(input_hw: Sequence[int], filters: Sequence[int], batch_norm: bool, name: str) -> Any:
    """A small U-Net returning LOGITS (no sigmoid), uncompiled: the loss decides how they are
    normalised.

    Each encoder level is two 3x3 convolutions (batch normalisation, ReLU) and 2x2 max pooling;
    the last entry of ``filters`` is the bottleneck; each decoder level up-samples by 2
    (bilinear), concatenates the encoder features of the same size and applies two 3x3
    convolutions; a 1x1 convolution gives one logit per pixel. Trained from scratch.

    Parameters
    ----------
    input_hw
        (rows, cols) of the one-channel input in [0, 1]; both divisible by
        ``2 ** (len(filters) - 1)``.
    filters
        Channels per level, the last one the bottleneck's.
    batch_norm
        Batch normalisation after each convolution.
    name
        The Keras model's name (``coarse`` or ``fine``).

    References
    ----------
    Ronneberger O, Fischer P, Brox T. U-Net: convolutional networks for biomedical image
    segmentation. MICCAI 2015.
    """
    import keras
    from keras import layers

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
    out = layers.Conv2D(1, 1, name="logits")(x)
    return keras.Model(image, out, name=name)


def bce_dice_loss(dice_weight: float) -> Callable[[Any, Any], Any]:
    """The coarse network's loss: binary cross-entropy on logits plus ``dice_weight`` x soft
    Dice loss (cross-entropy alone is dominated by the easy background far from the outline)."""
    import tensorflow as tf

    def loss(y_true: Any, logits: Any) -> Any:
        bce = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y_true, logits))
        p = tf.sigmoid(logits)
        inter = tf.reduce_sum(y_true * p, axis=(1, 2, 3))
        total = tf.reduce_sum(y_true, axis=(1, 2, 3)) + tf.reduce_sum(p, axis=(1, 2, 3))
        return bce + dice_weight * tf.reduce_mean(1.0 - (2.0 * inter + 1.0) / (total + 1.0))

    return loss


def ray_loss(
    n_radii: int, wrap_px: int, sigma_rows: float, l1_weight: float
) -> Callable[[Any, Any], Any]:
    """The fine network's loss: per column, cross-entropy of the softmax over the radius against
    a Gaussian (``sigma_rows``) around the true row, plus ``l1_weight`` x |soft-argmax - true row|
    (rows). The target is (B, n_angles) true rows; a column whose true row falls outside the
    band (NaN) carries no loss; the ``wrap_px`` wrapped columns on each side are cropped first."""
    import tensorflow as tf

    rows = tf.range(n_radii, dtype=tf.float32)[None, :, None]

    def loss(y_rows: Any, logits: Any) -> Any:
        z = logits[:, :, wrap_px:-wrap_px, 0] if wrap_px else logits[..., 0]  # (B, R, A)
        valid = tf.math.is_finite(y_rows)
        yr = tf.where(valid, y_rows, 0.0)[:, None, :]
        target = tf.exp(-0.5 * ((rows - yr) / sigma_rows) ** 2)
        target = target / tf.reduce_sum(target, axis=1, keepdims=True)
        logp = tf.nn.log_softmax(z, axis=1)
        ce = -tf.reduce_sum(target * logp, axis=1)
        expect = tf.reduce_sum(tf.exp(logp) * rows, axis=1)
        per = ce + l1_weight * tf.abs(expect - yr[:, 0, :])
        w = tf.cast(valid, tf.float32)
        return tf.reduce_sum(per * w) / tf.maximum(tf.reduce_sum(w), 1.0)

    return loss


def wrap_columns(x: np.ndarray, wrap_px: int) -> np.ndarray:
    """Append the last ``wrap_px`` columns on the left and the first on the right (axis -1): the
    unwrap is periodic in the angle, so the network sees across the seam."""
    if not wrap_px:
        return x
    return np.concatenate([x[..., -wrap_px:], x, x[..., :wrap_px]], axis=-1)


def stack_models(models: Sequence[Any]) -> Any:
    """One Keras model running every model of ``models`` (same input) and concatenating their
    one-channel outputs: one compiled call per batch instead of one per model (TensorFlow's
    per-call overhead, not the arithmetic, dominated the served ensemble's inference)."""
    import keras
    from keras import layers

    if len(models) == 1:
        return models[0]
    inp = keras.Input(tuple(models[0].input_shape[1:]))
    outs = []
    for j, m in enumerate(models):
        m.name = f"{m.name}_{j}"  # Keras needs unique names inside one model
        outs.append(m(inp))
    return keras.Model(inp, layers.Concatenate(axis=-1)(outs))


def model_outputs(stacked: Any, x: np.ndarray, chunk: int = 64) -> list[np.ndarray]:
    """Each member's (N, H, W) output for inputs (N, H, W) of a model or a
    :func:`stack_models` stack, in compiled calls of ``chunk`` images (``predict_on_batch``: no
    tf.data pipeline, ~4x faster than the eager call on one small image)."""
    if len(x) == 0:
        n_out = int(stacked.output_shape[-1])
        return [np.zeros(x.shape, np.float32) for _ in range(n_out)]
    out = np.concatenate(
        [np.asarray(stacked.predict_on_batch(x[i : i + chunk][..., None]))
         for i in range(0, len(x), chunk)]
    )  # fmt: skip
    return [out[..., j].astype(np.float32) for j in range(out.shape[-1])]
