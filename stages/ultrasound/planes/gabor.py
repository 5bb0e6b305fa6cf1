"""A fixed Gabor filter bank as a Keras layer: the plane classifier's convolutional front-end.

Why fixed filters: with ~130-270 labelled brain crops (the FETAL_PLANES_DB mirror), a CNN whose
first layers are learned from scratch did not get beyond 0.48 accuracy on held-out patients,
while oriented band-pass energy on a coarse grid of the head (this layer) followed by a learned
linear read-out reaches ~0.68 (``README``, plane classifier ablation). The filters are the
complex Gabor kernels of scikit-image (``skimage.filters.gabor_kernel``): a textbook model of
early visual cortex (Daugman J.G., JOSA A 2(7):1160-9, 1985) and the classic texture
descriptor for ultrasound. Nothing here is trained; nothing is downloaded.

This module imports Keras at import time (a registered serialisable layer must exist before a
saved model is loaded); :mod:`stages.ultrasound.serving.predictors` imports it before loading a
plane classifier, :mod:`stages.ultrasound.planes.classifier` where the bank is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np


def gabor_bank(frequency: float, n_orientations: int) -> np.ndarray:
    """Real and imaginary parts of ``n_orientations`` complex Gabor kernels, (k, k, 1, 2n).

    Parameters
    ----------
    frequency
        Spatial frequency in cycles per pixel (scikit-image's bandwidth 1, so the kernel's
        support shrinks as the frequency rises).
    n_orientations
        Orientations evenly spaced over [0, pi).

    Returns
    -------
    numpy.ndarray
        float32 kernels, channels ordered ``re_0, im_0, re_1, im_1, ...``.
    """
    from skimage.filters import gabor_kernel

    kernels = [
        gabor_kernel(frequency, theta=float(t))
        for t in np.arange(n_orientations) * np.pi / n_orientations
    ]
    side = max(k.shape[0] for k in kernels)
    out = np.zeros((side, side, 1, 2 * n_orientations), dtype=np.float32)
    for i, k in enumerate(kernels):
        pad = (side - k.shape[0]) // 2
        out[pad : pad + k.shape[0], pad : pad + k.shape[1], 0, 2 * i] = k.real
        out[pad : pad + k.shape[0], pad : pad + k.shape[1], 0, 2 * i + 1] = k.imag
    return out


def pyramid_step(frequency: float, top: float = 0.2) -> int:
    """The power of two by which to shrink the image so that ``frequency`` (cycles/pixel)
    lands above top / 2: 1 for f > 0.1, 2 for 0.05 < f <= 0.1, 4 for 0.025 < f <= 0.05 ..."""
    step = 1
    while frequency * step * 2 <= top:
        step *= 2
    return step


def feature_count(frequencies: Sequence[float], n_orientations: int, grids: Sequence[int]) -> int:
    """Length of the :class:`GaborGrid` feature vector."""
    return len(frequencies) * n_orientations * sum(g * g for g in grids)


@keras.saving.register_keras_serializable(package="fetal")
class GaborGrid(keras.layers.Layer):
    """log(1 + mean Gabor magnitude) over a ``g`` x ``g`` grid of cells, for each grid size.

    Input (N, S, S, 1) in [0, 1], S divisible by every grid size; output (N, D) with
    D = :func:`feature_count`. The kernels are constants, not weights: the layer has no
    trainable parameters and is saved by its config alone.
    """

    def __init__(
        self,
        frequencies: Sequence[float] = (0.1, 0.2, 0.3),
        n_orientations: int = 6,
        grids: Sequence[int] = (4, 8),
        pyramid: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.frequencies = [float(f) for f in frequencies]
        self.n_orientations = int(n_orientations)
        self.grids = [int(g) for g in grids]
        self.pyramid = bool(pyramid)
        self._steps = [pyramid_step(f) if self.pyramid else 1 for f in self.frequencies]
        self._banks = [
            gabor_bank(f * step, self.n_orientations)
            for f, step in zip(self.frequencies, self._steps, strict=True)
        ]

    def call(self, x: Any) -> Any:
        ops = keras.ops
        feats = []
        for bank, step in zip(self._banks, self._steps, strict=True):
            # A low frequency on the image shrunk ``step`` times is the same band at ``step``
            # times the frequency: a kernel ``step`` times narrower on ``step**2`` fewer pixels.
            xs = ops.average_pool(x, step, strides=step, padding="valid") if step > 1 else x
            size = xs.shape[1]
            resp = ops.conv(xs, ops.convert_to_tensor(bank), strides=1, padding="same")
            re, im = resp[..., 0::2], resp[..., 1::2]
            magnitude = ops.sqrt(re * re + im * im + 1e-12)
            for g in self.grids:
                cell = size // g
                pooled = ops.average_pool(magnitude, cell, strides=cell, padding="valid")
                feats.append(ops.reshape(pooled, (-1, g * g * self.n_orientations)))
        return ops.log1p(ops.concatenate(feats, axis=-1))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], feature_count(self.frequencies, self.n_orientations, self.grids))

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "frequencies": self.frequencies,
            "n_orientations": self.n_orientations,
            "grids": self.grids,
            "pyramid": self.pyramid,
        }
