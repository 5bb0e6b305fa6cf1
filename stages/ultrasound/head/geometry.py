"""Ellipse geometry of the fetal head: conic fits, residuals, size limits, skull thickness, crops.

Pure NumPy/SciPy functions on pixel coordinates; every segmentation method and the models'
crops build on them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from stages.ultrasound.head import Segmentation
from stages.ultrasound.imaging import Ellipse, ellipse_points


def conic_to_ellipse(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Geometric ellipses from conics ``A x^2 + B xy + C y^2 + D x + E y = 1`` (batched).

    Returns ``(params (n, 5) = cx, cy, a, b, angle), valid (n,) bool``; coordinates are those
    the conic was fitted in.
    """
    A, B, C, D, E = (coef[:, k] for k in range(5))
    det = 4 * A * C - B * B
    valid = det > 1e-12
    det = np.where(valid, det, 1.0)
    x0 = (B * E - 2 * C * D) / det
    y0 = (B * D - 2 * A * E) / det
    f0 = A * x0 * x0 + B * x0 * y0 + C * y0 * y0 + D * x0 + E * y0 - 1
    th = 0.5 * np.arctan2(B, A - C)
    c, s = np.cos(th), np.sin(th)
    l1 = A * c * c + B * c * s + C * s * s
    l2 = A * s * s - B * c * s + C * c * c
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.sqrt(-f0 / l1)
        b = np.sqrt(-f0 / l2)
    valid &= np.isfinite(a) & np.isfinite(b) & (l1 * l2 > 0) & (f0 < 0)
    return np.stack([x0, y0, a, b, th], axis=1), valid


def fit_conic(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Least-squares conic through points (x, y) (relative to a point inside the ellipse)."""
    M = np.stack([x * x, x * y, y * y, x, y], axis=1)
    coef, *_ = np.linalg.lstsq(M, np.ones_like(x), rcond=None)
    return coef


def ray_residual(pts: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Approximate distance (px) of points (n, 2) from ellipses ``ell`` (m, 5): |r_norm - 1| * R."""
    cx, cy, a, b, th = (ell[:, k : k + 1] for k in range(5))
    c, s = np.cos(th), np.sin(th)
    dx, dy = pts[None, :, 0] - cx, pts[None, :, 1] - cy
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    rn = np.sqrt(u * u + v * v)
    return np.abs(rn - 1) * np.hypot(dx, dy) / np.maximum(rn, 1e-9)


def covered_mean(diff: np.ndarray) -> np.ndarray:
    """Mean of ``diff`` (m, n) over its finite points, times the finite share: an ellipse mostly
    out of view cannot win on a small bright arc."""
    covered = np.isfinite(diff)
    mean = np.nanmean(np.where(covered, diff, np.nan), axis=1)
    return np.nan_to_num(mean) * covered.mean(axis=1)


@dataclass(frozen=True)
class AxisLimits:
    """Size and shape limits of a plausible head ellipse, relative to the image width.

    ``min_axis_frac`` < semi-minor / width, semi-major / width < ``max_axis_frac`` and
    semi-minor / semi-major > ``min_axis_ratio``.
    """

    min_axis_frac: float = 0.08
    max_axis_frac: float = 0.7
    min_axis_ratio: float = 0.55


def plausible(E: np.ndarray, width_px: int, limits: AxisLimits) -> np.ndarray:
    """Which ellipses (m, 5) pass the size and axis-ratio ``limits`` (image width ``width_px``)."""
    lo, hi = np.minimum(E[:, 2], E[:, 3]), np.maximum(E[:, 2], E[:, 3])
    return (
        np.isfinite(E).all(axis=1)
        & (lo > limits.min_axis_frac * width_px)
        & (hi < limits.max_axis_frac * width_px)
        & (lo / np.maximum(hi, 1e-9) > limits.min_axis_ratio)
    )


def fit_ellipse_points(xs: np.ndarray, ys: np.ndarray) -> Ellipse | None:
    """Least-squares ellipse through points (px), or None when they do not make one."""
    if len(xs) < 6:
        return None
    mx, my = float(np.mean(xs)), float(np.mean(ys))
    coef = fit_conic(xs - mx, ys - my)
    ell, valid = conic_to_ellipse(coef[None, :])
    if not valid[0]:
        return None
    cx, cy, a, b, th = ell[0]
    return Ellipse(cx + mx, cy + my, a, b, th).canonical()


def ellipse_from_outline(outline: np.ndarray) -> Ellipse | None:
    """Least-squares ellipse through the pixels of a thin annotation outline (HC18)."""
    ys, xs = np.nonzero(outline > 0)
    return fit_ellipse_points(xs.astype(float), ys.astype(float))


def skull_thickness_px(img_u8: np.ndarray, e: Ellipse, frac_max: float = 0.15) -> float:
    """Skull thickness (px): width of the bright band just inside the outline.

    The mean radial profile (normalised radius 1-frac_max .. 1) is thresholded half-way between
    its peak and the brain level; the thickness is the band above it, times the mean semi-axis.
    """
    h, w = img_u8.shape
    pts_r = np.linspace(1 - frac_max * 2, 1.0, 31)
    from scipy.ndimage import map_coordinates

    # all 31 x 90 samples in one call (a per-radius loop converted the image 31 times)
    pts = np.concatenate([ellipse_points(e, 90, r) for r in pts_r])
    v = map_coordinates(img_u8, [pts[:, 1], pts[:, 0]], order=1, cval=np.nan, output=np.float64)
    v = v.reshape(len(pts_r), 90)
    with warnings.catch_warnings():  # a radius wholly outside the image has no mean: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        prof = np.nanmean(v, axis=1)
    R = 0.5 * (e.a + e.b)
    if not np.isfinite(prof).any():
        return 0.05 * R
    peak = np.nanmax(prof)
    base = np.nanmin(prof[: len(prof) // 2]) if np.isfinite(prof[: len(prof) // 2]).any() else 0
    above = prof >= base + 0.5 * (peak - base)
    width = above[len(prof) // 3 :].sum() * (pts_r[1] - pts_r[0]) * R
    return float(np.clip(width, 0.02 * R, frac_max * R))


# The skull ellipse spans 1 / CROP_MARGIN of the crop's side: the ring just outside it stays in
# view (the anomaly score reads the skull ring's contrast from the crop: anomaly.autoencoder's
# ring_contrast).
CROP_MARGIN = 1.1


def upright_angle(angle_rad: float) -> float:
    """The major-axis direction in [-pi/2, pi/2): rotating by it keeps the image's top on top.

    An ellipse's axis has two directions (angle and angle + pi); ``Ellipse.canonical`` picks one
    in [0, pi), which turns a nearly horizontal head upside down when its angle is just under
    pi. The transducer is at the top of every B-mode image, so the near field (reverberation,
    the near hemisphere) must stay at the top of the crop for the models to see one layout.
    """
    return (angle_rad + math.pi / 2) % math.pi - math.pi / 2


def brain_crop(
    img_u8: np.ndarray, seg: Segmentation, size: int, margin: float = CROP_MARGIN
) -> np.ndarray:
    """The head as a ``size`` x ``size`` uint8 square: the ellipse's box, rotated and scaled.

    The ellipse's major axis becomes horizontal, the image's top stays on top
    (:func:`upright_angle`) and both axes span the square (times ``margin``), so heads of every
    size and orientation look alike to the models. Without an ellipse (``seg.ok`` False) the
    whole image is resized to the square.
    """
    from skimage.transform import resize, warp

    x = img_u8.astype(np.float64)
    if not seg.ok or seg.ellipse is None:
        return np.clip(
            np.round(resize(x, (size, size), preserve_range=True, anti_aliasing=True)), 0, 255
        ).astype(np.uint8)
    e = seg.ellipse
    angle = upright_angle(e.angle_rad)
    c, s = math.cos(angle), math.sin(angle)
    # output (row, col) -> normalised (u, v) in [-margin, margin] -> input (x, y)
    sa, sb = e.a * margin * 2 / size, e.b * margin * 2 / size
    # smoothing before the shrink avoids aliasing of speckle
    from scipy.ndimage import gaussian_filter

    sigma = max(0.0, 0.5 * (min(sa, sb) - 1))
    if sigma > 0:
        x = gaussian_filter(x, sigma)

    def inverse_map(rc: np.ndarray) -> np.ndarray:
        col, row = rc[:, 0], rc[:, 1]
        u = (col - (size - 1) / 2) * sa
        v = (row - (size - 1) / 2) * sb
        return np.stack([e.cx + u * c - v * s, e.cy + u * s + v * c], axis=1)

    out = warp(
        x,
        inverse_map,
        output_shape=(size, size),
        order=1,
        mode="constant",
        cval=0.0,
        preserve_range=True,
    )
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
