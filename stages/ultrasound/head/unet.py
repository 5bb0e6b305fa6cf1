"""The coarse stage's ellipse: from the low-resolution cranium probability map to an ellipse.

:func:`to_input` makes the coarse network's input; :func:`ellipse_from_probability` fits an
ellipse through the ``level`` contour of its probability (sub-pixel, the best of a few
least-squares and RANSAC fits when the network marked more than the head). The fine stage
(:mod:`.coarse_to_fine`) refines that ellipse at full resolution.

How the contour becomes an ellipse: marching squares (``skimage.measure.find_contours``)
interpolates the crossing of ``level`` linearly between pixel centres, the contour of the
bilinearly up-sampled map, sub-pixel without up-sampling anything; its points are mapped to the
original image's pixels (the map may be scaled differently along each axis). A network
sometimes marks other bright structures too, apart from the head or fused with it (small heads
of early pregnancy among limbs and placenta), so each of the largest regions above ``level``
gives candidates: the least-squares ellipse through its outer contour, the same fit trimmed of
points far off it, and the RANSAC ellipse most contour points follow (the head's arc when the
head is fused with the body). The candidate whose outline the map follows best wins
(:func:`_probability_contrast`: high just inside, low just outside). The map is not padded, so
where the head runs off the image its contour stops at the border instead of following it.

Reference: Ronneberger O et al. U-Net, MICCAI 2015.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from stages.ultrasound.head.geometry import (
    AxisLimits,
    conic_to_ellipse,
    covered_mean,
    fit_ellipse_points,
    plausible,
    ray_residual,
)
from stages.ultrasound.imaging import (
    Ellipse,
    ellipse_points,
    resize_to_shape,
)


def ellipse_from_probability(
    prob: np.ndarray,
    shape: tuple[int, int],
    level: float = 0.5,
    max_components: int = 3,
    limits: AxisLimits | None = None,
    seed: int = 0,
) -> tuple[Ellipse | None, float]:
    """The ellipse through the ``level`` contour of a low-resolution cranium probability map:
    the best-scoring plausible candidate of its ``max_components`` largest regions (module doc).

    Parameters
    ----------
    prob
        (h, w) probability of the cranium, 0-1.
    shape
        (rows, cols) of the image the ellipse is wanted in.
    level
        Probability of the outline.
    max_components
        Regions above ``level`` tried, largest first.
    limits
        Size and axis-ratio limits (None: the defaults of :class:`AxisLimits`): candidates
        outside them, such as a thin sliver of a limb, do not compete.
    seed
        Seed of the RANSAC draws (the same map gives the same ellipse).

    Returns
    -------
    ellipse, score
        The ellipse in original image pixels (None when no region gives one) and its
        probability contrast (up to 1; NaN without an ellipse).
    """
    from scipy.ndimage import label

    prob = np.asarray(prob, np.float64)
    labels, n = label(prob >= level)
    if n == 0:
        return None, float("nan")
    sizes = np.bincount(labels.ravel())[1:]
    lim = limits or AxisLimits()
    best, best_score = None, float("nan")
    for lab in np.argsort(-sizes)[:max_components] + 1:
        for e in _region_candidates(prob, labels == lab, level, shape, seed):
            if not plausible(np.array([[e.cx, e.cy, e.a, e.b, e.angle_rad]]), shape[1], lim)[0]:
                continue
            score = _probability_contrast(prob, e, shape)
            if best is None or score > best_score:
                best, best_score = e, score
    return best, best_score


def _region_candidates(
    prob: np.ndarray, region: np.ndarray, level: float, shape: tuple[int, int], seed: int
) -> list[Ellipse]:
    """The candidate ellipses (original image pixels) of one region above ``level`` of the map
    (:func:`ellipse_from_probability`): least-squares fits through its outer contour, trimmed
    (:func:`_trimmed_fits`), and the RANSAC ellipse most of the contour follows. A region of
    fewer than 6 pixels gives none."""
    from scipy.ndimage import binary_dilation
    from skimage.measure import find_contours

    if region.sum() < 6:
        return []
    h, w = prob.shape
    # this region alone: the ring of pixels around it keeps its sub-pixel crossing
    near = binary_dilation(region)
    contours = [c for c in find_contours(np.where(near, prob, 0.0), level) if len(c) >= 6]
    if not contours:
        return []
    c = max(contours, key=len)
    ys = (c[:, 0] + 0.5) * shape[0] / h - 0.5
    xs = (c[:, 1] + 0.5) * shape[1] / w - 0.5
    # fused regions: the ellipse most of the contour follows (the head's arc) is a candidate
    ransac = _ransac_contour_fit(xs, ys, 0.75 * shape[1] / w, np.random.default_rng(seed))
    return [e for e in [*_trimmed_fits(xs, ys, floor_px=0.5 * shape[1] / w), ransac] if e]


def _probability_contrast(prob: np.ndarray, e: Ellipse, shape: tuple[int, int]) -> float:
    """Mean probability just inside ellipse ``e`` (image pixels) minus just outside, on the
    (h, w) map, times the share of the outline inside the image (as :func:`covered_mean`).

    The bands lie 8 % of the radius (at least 1.5 map pixels) inside and outside: an ellipse
    that follows the network's outline all round scores near 1, one through the middle of a
    blob or around a ragged region much less.
    """
    from scipy.ndimage import map_coordinates

    h, w = prob.shape
    sx, sy = w / shape[1], h / shape[0]
    d = max(0.08, 1.5 / max(min(e.a * sx, e.b * sy), 1e-6))
    bands = []
    for scale in (1 - d, 1 + d):
        pts = ellipse_points(e, 96, scale)
        col, row = (pts[:, 0] + 0.5) * sx - 0.5, (pts[:, 1] + 0.5) * sy - 0.5
        bands.append(map_coordinates(prob, [row, col], order=1, mode="constant", cval=np.nan))
    with warnings.catch_warnings():  # an outline wholly outside the map has no mean: 0
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(covered_mean((bands[0] - bands[1])[None, :])[0])


def _ransac_contour_fit(
    xs: np.ndarray,
    ys: np.ndarray,
    tol_px: float,
    rng: np.random.Generator,
    n_hypotheses: int = 300,
) -> Ellipse | None:
    """The ellipse through the most contour points within ``tol_px``, from random 5-point
    conics, refitted by least squares on its inliers (None when no draw makes an ellipse).

    Each draw is fitted relative to its own five points' centroid, which lies inside any
    ellipse through them (the conic form ``... = 1`` needs the origin inside).
    """
    n = len(xs)
    if n < 8:
        return None
    pts = np.stack([xs, ys], axis=1)
    pick = rng.integers(0, n, size=(n_hypotheses, 5))
    P = pts[pick]
    c0 = P.mean(axis=1, keepdims=True)
    x, y = (P - c0)[..., 0], (P - c0)[..., 1]
    M = np.stack([x * x, x * y, y * y, x, y], axis=2)
    with np.errstate(all="ignore"):
        good = np.abs(np.linalg.det(M)) > 1e-12 * np.abs(M).max(axis=(1, 2)) ** 5
        coef = np.zeros((n_hypotheses, 5))
        if good.any():
            coef[good] = np.linalg.solve(M[good], np.ones((int(good.sum()), 5, 1)))[..., 0]
        ell, valid = conic_to_ellipse(coef)
    valid &= good
    if not valid.any():
        return None
    ell = ell[valid]
    ell[:, :2] += c0[valid, 0, :]
    with np.errstate(invalid="ignore"):
        inl = np.nan_to_num(ray_residual(pts, ell), nan=np.inf) < tol_px
    sel = inl[int(np.argmax(inl.sum(axis=1)))]
    e = None
    for _ in range(2):  # least-squares refits on the inliers
        if sel.sum() < 6:
            break
        e = fit_ellipse_points(xs[sel], ys[sel]) or e
        if e is None:
            break
        sel = ray_residual(pts, np.array([[e.cx, e.cy, e.a, e.b, e.angle_rad]]))[0] < tol_px
    return e


def _trimmed_fits(xs: np.ndarray, ys: np.ndarray, floor_px: float, rounds: int = 3):
    """Least-squares ellipses through points: all of them, then ``rounds`` refits each
    without the points more than twice the median residual (at least ``floor_px``) off."""
    e = fit_ellipse_points(xs, ys)
    if e is None:
        return
    yield e
    pts = np.stack([xs, ys], axis=1)
    for _ in range(rounds):
        res = ray_residual(pts, np.array([[e.cx, e.cy, e.a, e.b, e.angle_rad]]))[0]
        keep = res <= max(2.0 * float(np.median(res)), floor_px)
        if keep.sum() < 6 or keep.all():
            return
        e = fit_ellipse_points(xs[keep], ys[keep])
        if e is None:
            return
        yield e


def to_input(img_u8: np.ndarray, input_hw: Sequence[int]) -> np.ndarray:
    """uint8 image (rows, cols) -> the U-Net's float32 (H, W) input in [0, 1].

    Anti-aliased (area-like) resize. Training (``train_segmenter_us``) and inference
    (:func:`~.coarse_to_fine.coarse_probability`) both call this, so they cannot drift apart.
    """
    x = resize_to_shape(np.asarray(img_u8, np.float64) / 255.0, tuple(input_hw))
    return np.clip(x, 0.0, 1.0).astype(np.float32)
