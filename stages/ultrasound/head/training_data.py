"""The training data of the two networks, made afresh every epoch (NumPy/SciPy, no TensorFlow).

* Coarse: the enhanced image resized to the coarse input (:func:`~.unet.to_input`) and the
  share of each low-resolution pixel inside the target ellipse (:func:`soft_ellipse_mask`), so
  the network's 0.5 contour can sit between pixels; geometric and intensity augmentation
  (:func:`augment`).
* Fine: the polar unwrap around the TRUE ellipse perturbed like a coarse-stage error
  (:func:`fine_epoch`), so the fine network learns to correct what the coarse one gets wrong.

The target ellipse is the sonographer's outline's ellipse scaled about its centre to the head
circumference the sonographer reported (:func:`target_ellipse`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import affine_transform

from stages.ultrasound.head import polar
from stages.ultrasound.head.geometry import ellipse_from_outline
from stages.ultrasound.head.settings import AugmentSettings, FineSettings
from stages.ultrasound.head.unet import to_input
from stages.ultrasound.head.unet_network import wrap_columns
from stages.ultrasound.imaging import ramanujan_perimeter


def target_ellipse(outline: np.ndarray, hc_mm: float, pixel_mm: float) -> np.ndarray | None:
    """``(cx, cy, a, b, angle_rad)`` (px) of the ellipse fitted to the sonographer's outline,
    scaled about its centre to the reported circumference ``hc_mm``; None when no ellipse fits.

    The ellipse fitted to the drawn line runs along its middle and is still ~0.6 % longer than
    the reported circumference (HC18 README): the scale makes the network learn the reported
    measurement.
    """
    e = ellipse_from_outline(outline)
    if e is None or not (hc_mm > 0 and pixel_mm > 0):
        return None
    k = hc_mm / (float(ramanujan_perimeter(e.a, e.b)) * pixel_mm)
    return np.array([e.cx, e.cy, e.a * k, e.b * k, e.angle_rad])


def soft_ellipse_mask(
    shape_px: Sequence[int], ellipse_px: Sequence[float], out_hw: Sequence[int], sub: int = 4
) -> np.ndarray:
    """Share of each low-resolution pixel (``out_hw``) inside the full-resolution ellipse, by
    ``sub`` x ``sub`` supersampling (pixel centres aligned as :func:`~.unet.to_input` resizes)."""
    h, w = int(out_hw[0]), int(out_hw[1])
    sy, sx = shape_px[0] / h, shape_px[1] / w
    off = (np.arange(sub) + 0.5) / sub
    ys = ((np.arange(h)[:, None] + off[None, :]) * sy - 0.5).ravel()
    xs = ((np.arange(w)[:, None] + off[None, :]) * sx - 0.5).ravel()
    cx, cy, a, b, t = (float(v) for v in ellipse_px)
    c, s = math.cos(t), math.sin(t)
    dx, dy = xs[None, :] - cx, ys[:, None] - cy
    u, v = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
    inside = (u * u + v * v <= 1.0).astype(np.float32)
    return inside.reshape(h, sub, w, sub).mean(axis=(1, 3))


def coarse_arrays(
    images: Sequence[np.ndarray], ellipses_px: np.ndarray, input_hw: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Coarse inputs (N, H, W) in [0, 1] and soft target masks of the ellipses."""
    x = np.stack([to_input(im, input_hw) for im in images])
    y = [
        soft_ellipse_mask(im.shape, e, input_hw) for im, e in zip(images, ellipses_px, strict=True)
    ]
    return x, np.stack(y).astype(np.float32)


def _intensity(x: np.ndarray, rng: np.random.Generator, gamma: float, contrast: float,
               brightness: float, noise: float) -> np.ndarray:  # fmt: skip
    """``x ** g`` (g log-uniform in ``1 +- gamma``), a contrast factor, an offset and Gaussian
    noise, per image of (N, H, W) in [0, 1]; clipped to [0, 1]."""
    n = len(x)
    g = np.exp(rng.uniform(math.log(1 - gamma), math.log(1 + gamma), (n, 1, 1)))
    c = 1 + rng.uniform(-contrast, contrast, (n, 1, 1))
    # no draw for a change that is off: the fine unwraps' stream stays that of the lab runs
    b = rng.uniform(-brightness, brightness, (n, 1, 1)) if brightness else 0.0
    out = np.clip(x, 0, 1) ** g * c + b + rng.normal(0, noise, x.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def augment(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, aug: AugmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Random geometric (image and mask alike) and intensity (image only) changes.

    Each image is rotated by up to ``rotation_deg``, scaled by up to ``scale`` (fraction),
    shifted by up to ``shift`` (fraction of each side) and, with probability ``flip``, mirrored
    left-right (the probe stays at the top: no up-down mirror); bilinear, zero outside. Then the
    intensity changes of :func:`_intensity`. ``rng`` makes every draw (same seed, same batch).
    """
    n, h, w = x.shape
    xo, yo = np.empty_like(x), np.empty_like(y)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for i in range(n):
        t = math.radians(rng.uniform(-1, 1) * aug.rotation_deg)
        s = 1 + rng.uniform(-1, 1) * aug.scale
        flip = -1.0 if rng.random() < aug.flip else 1.0
        shift = rng.uniform(-1, 1, 2) * aug.shift * np.array([h, w])
        # output (row, col) -> input (row, col): inverse of scale . rotate . flip about the centre
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        inv = np.diag([1.0, flip]) @ rot.T / s
        offset = centre - inv @ (centre + shift)
        xo[i] = affine_transform(x[i], inv, offset, order=1, mode="constant", cval=0.0)
        yo[i] = affine_transform(y[i], inv, offset, order=1, mode="constant", cval=0.0)
    xo = _intensity(xo, rng, aug.gamma, aug.contrast, aug.brightness, aug.noise)
    return xo, np.clip(yo, 0, 1).astype(np.float32)


def fine_epoch(
    images: Sequence[np.ndarray],
    ellipses_px: np.ndarray,
    fs: FineSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of the fine network's inputs (N, R, A + 2 wrap) and target rows (N, A).

    Each image is unwrapped around its true ellipse perturbed like a coarse-stage error
    (:func:`~.polar.perturb_ellipse`); with probability ``flip`` the unwrap is mirrored (columns
    permuted, targets alike); then gamma, contrast and noise. A target row outside the band is
    NaN (no loss on that column).
    """
    g = fs.grid
    mirror = polar.mirror_columns(g.n_angles)
    xs = np.empty((len(images), g.n_radii, g.n_angles), np.float32)
    ys = np.empty((len(images), g.n_angles), np.float32)
    for i, (img, e) in enumerate(zip(images, ellipses_px, strict=True)):
        e0 = polar.perturb_ellipse(e, rng, fs.centre_frac, fs.axis_frac, fs.angle_deg)
        xi = polar.polar_unwrap(img, e0, g) / 255.0
        yi = g.rho_to_index(polar.polar_target_rho(e0, e, g))
        if rng.random() < fs.flip:
            xi, yi = xi[:, mirror], yi[mirror]
        xs[i], ys[i] = xi, yi
    xs = _intensity(xs, rng, fs.gamma, fs.contrast, 0.0, fs.noise)
    ys = np.where((ys >= 0) & (ys <= g.n_radii - 1), ys, np.nan)
    return wrap_columns(xs, fs.wrap_px), ys.astype(np.float32)
