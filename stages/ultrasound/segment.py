"""Stage ``segment_us``: skull ellipse, cranium and brain masks, brain crops, head circumference.

Classical method (``classical``), at ``work_width`` columns:

1. Smooth; from a few candidate centres cast rays and keep, on each ray, the radii where the
   profile falls from bright (skull) to dark (fluid/soft tissue) the most: the outer skull edge,
   which is where HC18 sonographers draw the outline.
2. RANSAC over those points with a vectorised 5-point conic fit (thousands of hypotheses per
   millisecond), then a least-squares refit on the inliers, re-casting rays from the new centre.
3. Every candidate ellipse is scored by its boundary contrast (mean brightness just inside the
   outline minus just outside, over the part of the outline inside the image) times the share
   of rays that support it; the best one wins. With ``rescore_top`` > 0 the best few are first
   refined (step 4) at ``work_width`` and ranked again with ``score`` (:data:`SCORERS`): the
   ``ring`` scores also ask the skull to be brighter than the brain inside it, which rejects
   outlines drawn around the uterine wall or along a bright arc inside the head.
4. With ``refine_width`` > 0 the winner is refitted at that width to one edge per ray, placed on
   the skull band as ``refine_edge`` says (:data:`EDGE_LOCATORS`). HC18 sonographers draw on the
   outer flank of the skull echo, about three quarters of the way up from the dark outside to
   the ridge (``level`` 0.75); the strongest box-filter drop lands ~2.5 % outside it.

The original study's method (threshold 180 + largest contour, then an ellipse fit) is kept as
``threshold`` for the ablation.

Learned method (``unet``): the cranium probability of a small U-Net (``train_segmenter_us``) at
low resolution, an ellipse through its ``unet_level`` contour (:func:`ellipse_from_probability`:
sub-pixel, the best of a few least-squares and RANSAC fits when the network marked more than
the head) and, with ``unet_refine_width`` > 0, step 4 above from that ellipse. In this stage an
HC18 image is segmented by the fold model that never saw it (the fold manifest
``data/processed/us/segmenter_folds.csv``) and every other image by the final model, so the
HC18 figures of this stage's report are out-of-fold.

Head circumference: Ramanujan perimeter of the fitted ellipse times the pixel size (mm/px).
Evaluation data: van den Heuvel TLA et al. PLoS ONE 2018;13(8):e0200412 (HC18).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.ultrasound.imaging import (
    Ellipse,
    dice,
    ellipse_mask,
    ellipse_points,
    ellipse_radius,
    ramanujan_perimeter,
    resize_to_width,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """A segmented head in ORIGINAL image pixels.

    ``ellipse`` is the outer skull outline (None when nothing was found, ``ok`` False);
    ``cranium`` is the filled ellipse; ``brain`` the interior shrunk by the skull thickness;
    ``skull_px`` the estimated skull thickness; ``score`` the boundary contrast (0-1 scale).
    """

    ok: bool
    ellipse: Ellipse | None
    shape: tuple[int, int]
    skull_px: float = float("nan")
    score: float = float("nan")
    reason: str = ""
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def cranium(self) -> np.ndarray:
        if "cranium" not in self._cache:
            self._cache["cranium"] = (
                ellipse_mask(self.shape, self.ellipse)
                if self.ellipse is not None
                else np.zeros(self.shape, bool)
            )
        return self._cache["cranium"]

    @property
    def brain(self) -> np.ndarray:
        if "brain" not in self._cache:
            if self.ellipse is None:
                self._cache["brain"] = np.zeros(self.shape, bool)
            else:
                shrink = 1 - self.skull_px / max(min(self.ellipse.a, self.ellipse.b), 1.0)
                self._cache["brain"] = ellipse_mask(self.shape, self.ellipse, max(shrink, 0.5))
        return self._cache["brain"]

    def label_image(self) -> np.ndarray:
        """uint8 labels: 0 background, 1 skull (cranium minus brain), 2 brain."""
        out = self.cranium.astype(np.uint8)
        out[self.brain] = 2
        return out

    def ellipse_fields(self) -> dict[str, float]:
        """The ellipse as table columns (``cx, cy, semi_major_px, semi_minor_px, angle_rad``;
        NaN without an ellipse): the rows of ``segmentation.csv`` and the segmenter's pyfunc."""
        e = self.ellipse
        values = (e.cx, e.cy, e.a, e.b, e.angle_rad) if e is not None else (np.nan,) * 5
        names = ("cx", "cy", "semi_major_px", "semi_minor_px", "angle_rad")
        return dict(zip(names, map(float, values), strict=True))

    def hc_px(self) -> float:
        e = self.ellipse
        return float(ramanujan_perimeter(e.a, e.b)) if e is not None else float("nan")


# --------------------------------------------------------------------------- conic fitting


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


# --------------------------------------------------------------------------- classical method


def _boundary_points(
    g: np.ndarray, cx: float, cy: float, n_rays: int, r_max: float, top_k: int, step_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per ray, the ``top_k`` radii where the profile drops most (bright inside, dark outside).

    Returns points (n_rays, top_k, 2) relative to (cx, cy) and their strengths (n_rays, top_k).
    """
    from scipy.ndimage import map_coordinates

    t = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    r = np.arange(3.0, r_max, 1.0)
    xs = cx + np.cos(t)[:, None] * r[None, :]
    ys = cy + np.sin(t)[:, None] * r[None, :]
    prof = map_coordinates(g, [ys, xs], order=1, mode="constant", cval=np.nan)
    inside = np.isfinite(prof)
    prof = np.where(inside, prof, 0.0)
    k = max(1, int(step_px))
    cs = np.concatenate([np.zeros((n_rays, 1)), np.cumsum(prof, axis=1)], axis=1)
    n = prof.shape[1]
    idx = np.arange(n)
    lo = np.clip(idx - k, 0, n)
    hi = np.clip(idx + k, 0, n)
    before = (cs[:, idx] - cs[:, lo]) / np.maximum(idx - lo, 1)
    after = (cs[:, hi] - cs[:, idx]) / np.maximum(hi - idx, 1)
    drop = np.where(inside, before - after, -np.inf)
    drop[:, : 2 * k] = -np.inf
    # non-maximum suppression along the ray so the top-k are distinct edges
    from scipy.ndimage import maximum_filter1d

    peak = (drop == maximum_filter1d(drop, size=2 * k + 1, axis=1)) & np.isfinite(drop)
    drop_nms = np.where(peak, drop, -np.inf)
    order = np.argsort(-drop_nms, axis=1)[:, :top_k]
    strength = np.take_along_axis(drop_nms, order, axis=1)
    rr = r[order]
    pts = np.stack([np.cos(t)[:, None] * rr, np.sin(t)[:, None] * rr], axis=2)
    return pts, strength


def _band_sampler(g: np.ndarray, params: np.ndarray, n: int) -> Callable[[float], np.ndarray]:
    """``sample(scale)``: ``g`` at ``n`` points of each ellipse of ``params`` (m, 5) scaled by
    ``scale``, shape (m, n); points outside the image are NaN."""
    from scipy.ndimage import map_coordinates

    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    cx, cy, a, b, th = (params[:, k : k + 1] for k in range(5))
    c, s = np.cos(th), np.sin(th)

    def sample(scale: float) -> np.ndarray:
        u, v = a * scale * np.cos(t), b * scale * np.sin(t)
        x, y = cx + u * c - v * s, cy + u * s + v * c
        return map_coordinates(g, [y.ravel(), x.ravel()], order=1, cval=np.nan).reshape(x.shape)

    return sample


def _covered_mean(diff: np.ndarray) -> np.ndarray:
    """Mean of ``diff`` (m, n) over its finite points, times the finite share: an ellipse mostly
    out of view cannot win on a small bright arc."""
    covered = np.isfinite(diff)
    mean = np.nanmean(np.where(covered, diff, np.nan), axis=1)
    return np.nan_to_num(mean) * covered.mean(axis=1)


def _contrast_score(g: np.ndarray, params: np.ndarray, n: int = 96, band: float = 0.06):
    """Boundary contrast of ellipses ``params`` (m, 5): mean(inside band) - mean(outside band),
    weighted by the covered share of the outline (:func:`_covered_mean`)."""
    sample = _band_sampler(g, params, n)
    # out-of-image samples are NaN; averaging over none of them is expected, not a problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        inner = np.nanmean(np.stack([sample(1 - band), sample(1 - band / 2)]), axis=0)
        outer = np.nanmean(np.stack([sample(1 + band), sample(1 + band * 1.5)]), axis=0)
        return _covered_mean(inner - outer)


def _ring_score(
    g: np.ndarray, params: np.ndarray, n: int = 96, band: float = 0.06, combine: str = "max"
):
    """Skull-ring contrast of ellipses ``params`` (m, 5): the band just inside the outline (the
    skull) minus the brighter of the band just outside and the brain further in (at 1 - 4 x
    ``band``). A head's skull is brighter than both; an outline around the uterine wall or a
    bright arc inside the brain is not. Weighted by the covered share like
    :func:`_contrast_score`.
    """
    sample = _band_sampler(g, params, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        skull = np.nanmean(np.stack([sample(1 - band), sample(1 - band / 2)]), axis=0)
        outer = np.nanmean(np.stack([sample(1 + band), sample(1 + band * 1.5)]), axis=0)
        brain = np.nanmean(np.stack([sample(1 - 4 * band), sample(1 - 5 * band)]), axis=0)
        dark = np.fmax(outer, brain) if combine == "max" else 0.5 * (outer + brain)
        return _covered_mean(skull - dark)


# how candidate ellipses are ranked (``score``)
SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "contrast": _contrast_score,
    "ring": _ring_score,
    "ring_mean": functools.partial(_ring_score, combine="mean"),
}


def _ransac_from_centre(
    g: np.ndarray,
    cx: float,
    cy: float,
    rng: np.random.Generator,
    p: dict[str, Any],
    n_hypotheses: int,
) -> tuple[np.ndarray, float] | None:
    """Best ellipse (cx, cy, a, b, th) from rays cast at (cx, cy) and the share of rays on it,
    out of ``n_hypotheses`` random 5-point conics."""
    h, w = g.shape
    n_rays = int(p.get("n_rays", 72))
    top_k = int(p.get("top_k", 3))
    pts, strength = _boundary_points(
        g,
        cx,
        cy,
        n_rays,
        r_max=float(np.hypot(h, w)) * 0.6,
        top_k=top_k,
        step_px=float(p.get("edge_px", 3)),
    )
    ok = np.isfinite(strength) & (strength > 0)
    grid = np.where(ok[..., None], pts, np.nan).reshape(-1, 2)  # (n_rays * top_k, 2)
    flat = grid[ok.ravel()]
    if len(flat) < 8:
        return None
    m = int(n_hypotheses)
    pick = rng.integers(0, len(flat), size=(m, 5))
    P = flat[pick]  # (m, 5, 2)
    x, y = P[..., 0], P[..., 1]
    M = np.stack([x * x, x * y, y * y, x, y], axis=2)
    # The 5x5 system is singular (np.linalg.solve raises) when a point is drawn twice or three
    # points lie on one line through the centre (one ray and its opposite: y = kx makes their
    # rows span two dimensions). Finding those draws is 5x cheaper than a determinant of every
    # system, which is only the fallback for a rare singular system left.
    n_lines = n_rays // 2 if n_rays % 2 == 0 else n_rays
    line = (np.flatnonzero(ok.ravel()) // top_k % n_lines)[pick]
    line.sort(axis=1)
    pick.sort(axis=1)
    good = (np.diff(pick, axis=1) != 0).all(axis=1) & (line[:, 2:] != line[:, :-2]).all(axis=1)
    with np.errstate(all="ignore"):
        coef = np.zeros((m, 5))
        try:
            coef[good] = np.linalg.solve(M[good], np.ones((int(good.sum()), 5, 1)))[..., 0]
        except np.linalg.LinAlgError:
            good &= np.abs(np.linalg.det(M)) > 1e-9
            coef[good] = np.linalg.solve(M[good], np.ones((int(good.sum()), 5, 1)))[..., 0]
        ell, valid = conic_to_ellipse(coef)
        valid &= good
        a, b = ell[:, 2], ell[:, 3]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        valid &= lo > float(p.get("min_axis_frac", 0.08)) * w
        valid &= hi < float(p.get("max_axis_frac", 0.7)) * w
        valid &= lo / np.maximum(hi, 1e-9) > float(p.get("min_axis_ratio", 0.55))
    if not valid.any():
        return None
    ell = ell[valid]
    tol = float(p.get("inlier_px", 2.5))
    # a ray supports an ellipse once, whichever of its top-k edges lies on it
    with np.errstate(invalid="ignore"):
        d = _ray_residual(grid, ell).reshape(len(ell), n_rays, top_k)
        share = (np.nan_to_num(d, nan=np.inf) < tol).any(axis=2).mean(axis=1)
    e = ell[int(np.argmax(share))]
    for _ in range(3):  # least-squares refits on the inliers
        sel = _ray_residual(flat, e[None, :])[0] < tol * 1.5
        if sel.sum() < 6:
            break
        ee, vv = conic_to_ellipse(fit_conic(flat[sel, 0], flat[sel, 1])[None, :])
        if not vv[0]:
            break
        e = ee[0]
    with np.errstate(invalid="ignore"):
        d = _ray_residual(grid, e[None, :]).reshape(n_rays, top_k)
        share = float((np.nan_to_num(d, nan=np.inf) < tol).any(axis=1).mean())
    e = e.copy()
    e[0] += cx
    e[1] += cy
    return e, share


def _ray_residual(pts: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """Approximate distance (px) of points (n, 2) from ellipses ``ell`` (m, 5): |r_norm - 1| * R."""
    cx, cy, a, b, th = (ell[:, k : k + 1] for k in range(5))
    c, s = np.cos(th), np.sin(th)
    dx, dy = pts[None, :, 0] - cx, pts[None, :, 1] - cy
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    rn = np.sqrt(u * u + v * v)
    return np.abs(rn - 1) * np.hypot(dx, dy) / np.maximum(rn, 1e-9)


def _refine(g: np.ndarray, e: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Re-fit ``e`` (cx, cy, a, b, th, in ``g`` pixels) to the strongest drop near its outline.

    Rays from the centre, searched only in a band of +-``refine_band`` of the radius, give one
    edge per ray at the finer resolution of ``g``; a robust least-squares conic through them
    (two rounds, dropping points more than 2 MAD away) is the result.
    """
    from scipy.ndimage import map_coordinates

    cx, cy, a, b, th = e
    n = int(p.get("refine_rays", 180))
    band = float(p.get("refine_band", 0.12))
    k_fine = p.get("refine_edge_px")  # half-window of the edge detector in ``g`` pixels
    k = max(
        1,
        int(round(float(k_fine)))
        if k_fine is not None
        else int(round(float(p.get("edge_px", 3)) * g.shape[1] / float(p.get("work_width", 320)))),
    )
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    base = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
    c, s = np.cos(th), np.sin(th)
    dirs = np.stack([base[:, 0] * c - base[:, 1] * s, base[:, 0] * s + base[:, 1] * c], axis=1)
    rad = np.linalg.norm(dirs, axis=1)
    unit = dirs / rad[:, None]
    rs = np.arange(-band, band + 1e-9, 0.5 / max(rad.mean(), 1))  # fraction of radius
    R = rad[:, None] * (1 + rs[None, :])
    xs, ys = cx + unit[:, 0:1] * R, cy + unit[:, 1:2] * R
    prof = map_coordinates(g, [ys, xs], order=1, cval=np.nan)
    step = R[:, 1] - R[:, 0]
    kk = np.maximum(1, np.round(k / step)).astype(int)
    kk = int(np.median(kk))
    if prof.shape[1] < 2 * kk + 3:  # search band too short for the edge filter: keep ``e``
        return e
    cs = np.nancumsum(np.concatenate([np.zeros((n, 1)), prof], axis=1), axis=1)
    j = np.arange(kk, prof.shape[1] - kk)
    drop = (cs[:, j] - cs[:, j - kk]) / kk - (cs[:, j + kk] - cs[:, j]) / kk
    valid_ray = np.isfinite(prof).all(axis=1)
    if valid_ray.sum() < 12:
        return e
    best = j[np.argmax(drop, axis=1)]
    # weak edges (the lateral skull, parallel to the beam, echoes faintly; there the strongest
    # drop is often soft tissue or the sector border) are left out of the fit
    strength = np.max(np.where(np.isfinite(drop), drop, -np.inf), axis=1)
    min_rel = float(p.get("refine_min_strength", 0.0))
    if min_rel > 0 and valid_ray.any():
        strong = strength >= min_rel * np.median(strength[valid_ray])
        if (valid_ray & strong).sum() >= 12:
            valid_ray = valid_ray & strong
    pos = EDGE_LOCATORS[str(p.get("refine_edge", "drop"))](
        np.where(np.isfinite(prof), prof, 0.0), best, 3 * kk, float(p.get("refine_level", 0.5))
    )
    rad_at = rad * (1 + rs[0] + pos * (rs[1] - rs[0]))  # fractional sample index -> radius
    px = (unit[:, 0] * rad_at)[valid_ray]
    py = (unit[:, 1] * rad_at)[valid_ray]
    sel = np.ones(len(px), bool)
    out = e
    for _ in range(2):
        if sel.sum() < 8:
            break
        ee, vv = conic_to_ellipse(fit_conic(px[sel], py[sel])[None, :])
        if not vv[0]:
            break
        out = ee[0].copy()
        out[0] += cx
        out[1] += cy
        res = _ray_residual(np.stack([px + cx, py + cy], axis=1), out[None, :])[0]
        mad = np.median(res) + 1e-6
        sel = res < max(2.5 * mad, 1.0)
    return out


def _edge_drop(prof: np.ndarray, drop_idx: np.ndarray, win: int, level: float) -> np.ndarray:
    """The strongest bright-to-dark drop itself (box-filter difference; biased outward by up to
    the filter half-width when the skull band is thinner than it)."""
    return drop_idx.astype(float)


def _edge_ridge(prof: np.ndarray, drop_idx: np.ndarray, win: int, level: float) -> np.ndarray:
    """The brightest sample of the skull band within ``win`` samples inside the drop."""
    n, m = prof.shape
    off = np.arange(-win, 1)
    idx = np.clip(drop_idx[:, None] + off[None, :], 0, m - 1)
    return idx[np.arange(n), np.argmax(prof[np.arange(n)[:, None], idx], axis=1)].astype(float)


def _edge_level(prof: np.ndarray, drop_idx: np.ndarray, win: int, level: float) -> np.ndarray:
    """Where the profile, going out from the skull ridge, first falls below
    ``floor + level * (ridge - floor)``; floor is the darkest sample within ``win`` outside the
    drop. ``level`` 0.5 is the half-maximum of the outer flank, 1 the ridge, 0 the dark floor.
    Sub-sample position by linear interpolation.
    """
    n, m = prof.shape
    rows = np.arange(n)[:, None]
    ridge = _edge_ridge(prof, drop_idx, win, level).astype(int)
    out_idx = np.clip(ridge[:, None] + np.arange(0, 2 * win + 1)[None, :], 0, m - 1)
    seg = prof[rows, out_idx]
    floor = np.min(seg, axis=1)
    thr = floor + level * (seg[:, 0] - floor)
    below = seg < thr[:, None]
    first = np.where(below.any(axis=1), np.argmax(below, axis=1), seg.shape[1] - 1)
    first = np.maximum(first, 1)
    v0 = seg[np.arange(n), first - 1]
    v1 = seg[np.arange(n), first]
    frac = np.clip((v0 - thr) / np.maximum(v0 - v1, 1e-9), 0, 1)
    return np.minimum(ridge + first - 1 + frac, m - 1)


# how ``_refine`` places the outline on each ray across the bright skull band (``refine_edge``)
EDGE_LOCATORS: dict[str, Callable[[np.ndarray, np.ndarray, int, float], np.ndarray]] = {
    "drop": _edge_drop,
    "ridge": _edge_ridge,
    "level": _edge_level,
}


def _plausible(E: np.ndarray, w: int, p: dict[str, Any]) -> np.ndarray:
    """Which ellipses (m, 5) pass the RANSAC size and axis-ratio limits (image width ``w``)."""
    lo, hi = np.minimum(E[:, 2], E[:, 3]), np.maximum(E[:, 2], E[:, 3])
    return (
        np.isfinite(E).all(axis=1)
        & (lo > float(p.get("min_axis_frac", 0.08)) * w)
        & (hi < float(p.get("max_axis_frac", 0.7)) * w)
        & (lo / np.maximum(hi, 1e-9) > float(p.get("min_axis_ratio", 0.55)))
    )


def _dedupe(cands: list[np.ndarray], tol_px: float) -> list[int]:
    """Indices of candidates that differ (centre or axes) by more than ``tol_px``."""
    keep: list[int] = []
    for i, e in enumerate(cands):
        if all(np.abs(e[:4] - cands[j][:4]).max() > tol_px for j in keep):
            keep.append(i)
    return keep


def _classical(
    img_u8: np.ndarray, params: dict[str, Any], segmenter: Any = None
) -> tuple[Ellipse | None, float, str]:
    from scipy.ndimage import gaussian_filter

    work_width = int(params.get("work_width", 320))
    x = img_u8.astype(np.float64) / 255.0
    small, scale = resize_to_width(x, min(work_width, img_u8.shape[1]))
    g = gaussian_filter(small, float(params.get("smooth_px", 1.5)))
    h, w = g.shape
    rng = np.random.default_rng(int(params.get("seed", 0)))
    # candidate centres: a grid over the middle of the image (the head is rarely at the rim)
    n = int(params.get("grid", 3))
    centres = [(w * a, h * b) for a in np.linspace(0.25, 0.75, n) for b in np.linspace(0.3, 0.7, n)]
    # the grid pass only has to land near the head: its centres are re-cast below with the full
    # ``n_hypotheses``, so it can afford fewer (``n_hypotheses_grid``)
    m_full = int(params.get("n_hypotheses", 800))
    m_grid = int(params.get("n_hypotheses_grid", m_full))
    first = [
        r for r in (_ransac_from_centre(g, cx, cy, rng, params, m_grid) for cx, cy in centres) if r
    ]
    cands: list[np.ndarray] = []
    shares: list[float] = []
    # re-cast from each distinct fitted centre: rays then cross the outline nearly at right angles
    for i in _dedupe([e for e, _ in first], 0.03 * w):
        e, share = first[i]
        if 0 <= e[0] < w and 0 <= e[1] < h:
            res = _ransac_from_centre(g, e[0], e[1], rng, params, m_full)
            if res is not None:
                e, share = res
        cands.append(e)
        shares.append(share)
    if not cands:
        return None, float("nan"), "no ellipse candidate"
    E = np.array(cands)
    shares_a = np.asarray(shares)
    score = _contrast_score(g, E) * shares_a
    best = int(np.argmax(score))
    if not np.isfinite(score[best]) or score[best] <= float(params.get("min_score", 0.01)):
        return None, float(score[best]), "no ellipse with enough boundary contrast"
    top = int(params.get("rescore_top", 0))
    if top:
        # refine the best few at work resolution, then rank them again: a roughly placed head
        # outline snaps onto the skull and can overtake a candidate that merely looked better
        idx = np.argsort(-score)[:top]
        R = np.array([_refine(g, E[i], params) for i in idx])
        bad = ~_plausible(R, w, params)  # a refit that collapsed or ran away is not used
        R[bad] = E[idx[bad]]
        rank = SCORERS[str(params.get("score", "contrast"))](g, R) * shares_a[idx]
        j = int(np.argmax(rank))
        e = R[j]
        best_score = float(_contrast_score(g, e[None, :])[0] * shares_a[idx[j]])
    else:
        e, best_score = E[best], float(score[best])
    fine_w = int(params.get("refine_width", 0))
    out = Ellipse(*map(float, e)).scaled(1 / scale)
    if fine_w:
        fine, fscale = resize_to_width(x, min(fine_w, img_u8.shape[1]))
        fine = gaussian_filter(fine, float(params.get("smooth_px", 1.5)) * fscale / scale)
        ef = Ellipse(*e).scaled(fscale / scale)
        e2 = _refine(fine, np.array([ef.cx, ef.cy, ef.a, ef.b, ef.angle_rad]), params)
        if _plausible(e2[None, :], fine.shape[1], params)[0]:
            out = Ellipse(*map(float, e2)).scaled(1 / fscale)
    return out.canonical(), best_score, ""


def ellipse_from_probability(
    prob: np.ndarray,
    shape: tuple[int, int],
    level: float = 0.5,
    max_components: int = 3,
    limits: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Ellipse | None, float]:
    """The ellipse through the ``level`` contour of a low-resolution cranium probability map.

    Marching squares (``skimage.measure.find_contours``) interpolates the crossing of ``level``
    linearly between pixel centres, which is the contour of the bilinearly up-sampled map:
    sub-pixel without up-sampling anything. Contour points are mapped to the pixels of the
    original image (``shape``; the map may be scaled differently along each axis) and conics
    are fitted to them by least squares.

    A network trained on ~160 images sometimes marks other bright structures too, apart from
    the head or fused with it (small heads of early pregnancy, zoomed in among limbs and
    placenta). So each of the ``max_components`` largest connected regions above ``level``
    gives candidates: the least-squares ellipse through its outer contour, the same fit after
    trimming points off it (three rounds without the points more than twice the median
    residual away) and the RANSAC ellipse that most contour points follow (within 0.75 map
    pixels, 300 random 5-point conics seeded by ``seed``), which finds the head's arc when the
    network fused the head with the fetal body (small heads of early pregnancy, measured on
    HC18 fold 0: mean |HC error| 5.7 mm with these candidates, 6.8 mm without RANSAC, 9.2 mm
    with the longest contour of the map alone). The candidate whose
    outline the map follows best wins (:func:`_probability_contrast`: high just inside, low
    just outside). The map is not padded, so where the head runs off the image its contour
    stops at the border instead of following it.

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
        Size and axis-ratio limits (``min_axis_frac``, ``max_axis_frac`` of the image width,
        ``min_axis_ratio``; defaults as in ``segment_us``): candidates outside them, such as a
        thin sliver of a limb, do not compete.
    seed
        Seed of the RANSAC draws (the same map gives the same ellipse).

    Returns
    -------
    ellipse, score
        The ellipse in original image pixels (None when no region gives one) and its
        probability contrast (up to 1; NaN without an ellipse).
    """
    from scipy.ndimage import binary_dilation, label
    from skimage.measure import find_contours

    prob = np.asarray(prob, np.float64)
    h, w = prob.shape
    labels, n = label(prob >= level)
    if n == 0:
        return None, float("nan")
    sizes = np.bincount(labels.ravel())[1:]
    lim = limits or {}
    best, best_score = None, float("nan")
    for lab in np.argsort(-sizes)[:max_components] + 1:
        if sizes[lab - 1] < 6:
            continue
        # this region alone: the ring of pixels around it keeps its sub-pixel crossing
        near = binary_dilation(labels == lab)
        contours = [c for c in find_contours(np.where(near, prob, 0.0), level) if len(c) >= 6]
        if not contours:
            continue
        c = max(contours, key=len)
        ys = (c[:, 0] + 0.5) * shape[0] / h - 0.5
        xs = (c[:, 1] + 0.5) * shape[1] / w - 0.5
        # fused regions: the ellipse most of the contour follows (the head's arc) is a candidate
        ransac = _ransac_contour_fit(xs, ys, 0.75 * shape[1] / w, np.random.default_rng(seed))
        for e in [*_trimmed_fits(xs, ys, floor_px=0.5 * shape[1] / w), ransac]:
            if e is None:
                continue
            if not _plausible(np.array([[e.cx, e.cy, e.a, e.b, e.angle_rad]]), shape[1], lim)[0]:
                continue
            score = _probability_contrast(prob, e, shape)
            if best is None or score > best_score:
                best, best_score = e, score
    return best, best_score


def _probability_contrast(prob: np.ndarray, e: Ellipse, shape: tuple[int, int]) -> float:
    """Mean probability just inside ellipse ``e`` (image pixels) minus just outside, on the
    (h, w) map, times the share of the outline inside the image (as :func:`_covered_mean`).

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
        return float(_covered_mean((bands[0] - bands[1])[None, :])[0])


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
        inl = np.nan_to_num(_ray_residual(pts, ell), nan=np.inf) < tol_px
    sel = inl[int(np.argmax(inl.sum(axis=1)))]
    e = None
    for _ in range(2):  # least-squares refits on the inliers
        if sel.sum() < 6:
            break
        e = fit_ellipse_points(xs[sel], ys[sel]) or e
        if e is None:
            break
        sel = _ray_residual(pts, np.array([[e.cx, e.cy, e.a, e.b, e.angle_rad]]))[0] < tol_px
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
        res = _ray_residual(pts, np.array([[e.cx, e.cy, e.a, e.b, e.angle_rad]]))[0]
        keep = res <= max(2.0 * float(np.median(res)), floor_px)
        if keep.sum() < 6 or keep.all():
            return
        e = fit_ellipse_points(xs[keep], ys[keep])
        if e is None:
            return
        yield e


def _threshold(
    img_u8: np.ndarray, params: dict[str, Any], segmenter: Any = None
) -> tuple[Ellipse | None, float, str]:
    """The original study's method: threshold (180) + largest contour + ellipse fit."""
    from skimage.measure import find_contours

    mask = img_u8 >= int(params.get("threshold", 180))
    contours = find_contours(mask.astype(float), 0.5)
    if not contours:
        return None, float("nan"), "no contour above threshold"
    c = max(contours, key=len)
    if len(c) < 6:
        return None, float("nan"), "contour too short"
    e = fit_ellipse_points(c[:, 1], c[:, 0])
    if e is None:
        return None, float("nan"), "ellipse fit failed"
    return e, float("nan"), ""


class HeadSegmenter:
    """A trained cranium U-Net (``train_segmenter_us``) loaded from its model folder.

    ``probability(img_u8)`` resizes the (enhanced) image to the network's input and returns the
    cranium probability map at that size; :func:`ellipse_from_probability` maps it back.
    """

    def __init__(self, folder: str | Path) -> None:
        from stages.ultrasound.models import load_model_dir

        self.folder = Path(folder)
        self.model, self.config = load_model_dir(self.folder)
        self.input_hw = (int(self.config["input_height"]), int(self.config["input_width"]))

    def probability(self, img_u8: np.ndarray) -> np.ndarray:
        from stages.ultrasound.models import predict_masks

        return predict_masks(self.model, to_input(img_u8, self.input_hw)[None, ..., None])[0]


def to_input(img_u8: np.ndarray, input_hw: Sequence[int]) -> np.ndarray:
    """uint8 image (rows, cols) -> the U-Net's float32 (H, W) input in [0, 1].

    Anti-aliased (area-like) resize. Training (``train_segmenter_us``) and inference
    (:meth:`HeadSegmenter.probability`) both call this, so they cannot drift apart.
    """
    from stages.ultrasound.imaging import resize_to_shape

    x = resize_to_shape(np.asarray(img_u8, np.float64) / 255.0, tuple(input_hw))
    return np.clip(x, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _cached_segmenter(folder: str) -> HeadSegmenter:
    return HeadSegmenter(folder)


def load_segmenter(folder: str | Path | None) -> HeadSegmenter | None:
    """The :class:`HeadSegmenter` of ``folder``, loaded once per process (Dask workers segment
    many images with the same few fold models); ``None`` for no folder ("" or None: the
    methods without a U-Net)."""
    return _cached_segmenter(str(Path(folder).resolve())) if folder else None


def _unet(
    img_u8: np.ndarray, params: dict[str, Any], segmenter: HeadSegmenter | None = None
) -> tuple[Ellipse | None, float, str]:
    """U-Net cranium mask -> ellipse through its contour -> optional classical refinement.

    The contour is at probability ``unet_level``.

    The score is the probability contrast across the ellipse (:func:`ellipse_from_probability`):
    near 1 when the network drew one clean ellipse, low for a ragged or split mask.
    With ``unet_refine_width`` > 0 the ellipse is re-fitted onto the skull's outer flank at that
    width as the classical method does (``_refine`` with the ``refine_*`` settings); a refit
    that is implausible or changes the circumference by more than ``unet_refine_max_change``
    (fraction) is not used.

    With ``unet_fallback_score`` > 0 an image whose U-Net ellipse scores below it (or has
    none) is segmented by the classical method instead: the network's failures are mostly
    small early-pregnancy heads fused with the fetal body in its mask, where the ray-cast
    skull edges still find the head.
    """
    from scipy.ndimage import gaussian_filter

    if segmenter is None:
        raise ValueError("segment_us.method 'unet' needs a trained segmenter (train_segmenter_us)")
    prob = segmenter.probability(img_u8)
    e, score = ellipse_from_probability(
        prob,
        img_u8.shape,
        float(params.get("unet_level", 0.5)),
        limits=params,
        seed=int(params.get("seed", 0)),
    )
    h, w = img_u8.shape
    fallback = float(params.get("unet_fallback_score", 0.0))
    if fallback > 0 and (e is None or not score >= fallback):
        return _classical(img_u8, params)
    if e is None:
        return None, float("nan"), "no plausible cranium ellipse in the U-Net mask"
    fine_w = int(params.get("unet_refine_width", 0))
    if fine_w:
        x = img_u8.astype(np.float64) / 255.0
        fine, fscale = resize_to_width(x, min(fine_w, w))
        # the classical method's smoothing, in pixels of its ``work_width`` image
        sigma = (
            float(params.get("smooth_px", 1.5)) * fscale * w / int(params.get("work_width", 320))
        )
        fine = gaussian_filter(fine, sigma)
        ef = e.scaled(fscale)
        e2 = _refine(fine, np.array([ef.cx, ef.cy, ef.a, ef.b, ef.angle_rad]), params)
        change = abs(ramanujan_perimeter(e2[2], e2[3]) / ramanujan_perimeter(ef.a, ef.b) - 1)
        if _plausible(e2[None, :], fine.shape[1], params)[0] and change <= float(
            params.get("unet_refine_max_change", 0.05)
        ):
            e = Ellipse(*map(float, e2)).scaled(1 / fscale)
    return e.canonical(), float(score), ""


SEGMENTERS: dict[
    str, Callable[[np.ndarray, dict[str, Any], Any], tuple[Ellipse | None, float, str]]
] = {
    "classical": _classical,
    "threshold": _threshold,
    "unet": _unet,
}


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


def segment_image(
    img_u8: np.ndarray, params: dict[str, Any], segmenter: HeadSegmenter | None = None
) -> Segmentation:
    """Find the fetal skull ellipse in one 2-D uint8 (enhanced) image.

    ``params`` is the ``segment_us`` section (``method``, ``work_width``, ...); ``segmenter``
    the trained U-Net that method ``unet`` needs (:func:`load_segmenter`; the other methods
    ignore it). Never raises on an image without a head: returns ``ok=False`` with a reason.
    """
    if img_u8.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img_u8.shape}")
    e, score, reason = SEGMENTERS[params.get("method", "classical")](img_u8, params, segmenter)
    if e is None:
        return Segmentation(False, None, img_u8.shape, score=score, reason=reason)
    t = skull_thickness_px(img_u8, e)
    return Segmentation(True, e, img_u8.shape, skull_px=t, score=score)


# The skull ellipse spans 1 / CROP_MARGIN of the crop's side: the ring just outside it stays in
# view (the anomaly score reads the skull ring's contrast from the crop, models.ring_contrast).
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


def filled_outline(outline: np.ndarray) -> np.ndarray:
    """The region inside a closed outline (HC18 ground truth), outline included."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(outline > 0)


def truth_mask(outline: np.ndarray) -> tuple[np.ndarray, Ellipse | None, bool]:
    """Ground-truth head mask of an HC18 annotation; ``degenerate`` when filling fails.

    An outline that runs off the image (HC18 ``628_2HC``) is not closed, so filling it leaves
    only the outline; then the mask is the ellipse fitted to the outline pixels instead.
    """
    filled = filled_outline(outline)
    e = ellipse_from_outline(outline)
    degenerate = filled.sum() < 2 * (outline > 0).sum()
    if degenerate and e is not None:
        filled = ellipse_mask(outline.shape, e)
    return filled, e, bool(degenerate)


# --------------------------------------------------------------------------- stage


# Where train_segmenter_us writes its fold manifest and models (deps of segment_us in dvc.yaml);
# the writer and every reader (this stage, the model bundles, score-us, the benches) use these.
SEGMENTER_FOLDS = Path("data/processed/us/segmenter_folds.csv")
SEGMENTER_MODELS = Path("data/models/us/segmenter")
SEGMENTER_FINAL = "final"
FINAL_SEGMENTER = SEGMENTER_MODELS / SEGMENTER_FINAL
# HC18 names run from small to big heads; the classical settings were tuned on the first 100
HC18_N_TUNE = 100


def fold_dir(fold: int) -> str:
    """Sub-folder of :data:`SEGMENTER_MODELS` holding the model trained without ``fold``."""
    return f"fold_{int(fold)}"


def read_segmenter_folds(path: str | Path) -> dict[str, int]:
    """The fold manifest as image name -> fold (names kept as strings: ``"000_HC"``)."""
    import pandas as pd

    folds = pd.read_csv(path, dtype={"image": str})
    return {str(k): int(v) for k, v in zip(folds["image"], folds["fold"], strict=True)}


def segmenter_folder(dataset: str, name: str, folds: dict[str, int], models: Path) -> Path:
    """The U-Net that may segment an image without having seen it.

    An HC18 image of the fold manifest (``folds``: image -> fold) gets the model trained
    without its fold (``fold_K``); every other image (FETAL_PLANES_DB, HC18 images the
    segmenter never trained on) gets the ``final`` model trained on every HC18 image.
    """
    if dataset == "hc18" and name in folds:
        return models / fold_dir(folds[name])
    return models / SEGMENTER_FINAL


def hc18_summary(
    dice: Sequence[float], signed_error_mm: Sequence[float], hc_true_mm: Sequence[float]
) -> dict[str, float]:
    """Dice and head-circumference error (mean, median, signed mean) of HC18 images.

    An image without an ellipse (signed error NaN) keeps its Dice (0 for an empty mask) and
    counts as an error of its whole circumference, as if 0 mm were measured: a failure must
    cost, and the figures stay finite for JSON and the registry tags. ``train_segmenter_us``,
    ``segment_us`` and ``evaluate_us`` all summarise with this, so their figures agree.
    """
    d = np.asarray(dice, dtype=float)
    signed = np.asarray(signed_error_mm, dtype=float)
    missing = np.isnan(signed)
    err = np.where(missing, np.asarray(hc_true_mm, dtype=float), np.abs(signed))

    def stat(fn: Callable[[np.ndarray], Any], a: np.ndarray) -> float:
        return float(fn(a)) if len(a) else float("nan")

    return {
        "dice_mean": stat(np.mean, d),
        "dice_median": stat(np.median, d),
        "hc_error_mm_mean": stat(np.mean, err),
        "hc_error_mm_median": stat(np.median, err),
        "hc_error_mm_signed_mean": stat(np.mean, signed[~missing]),
        "n_no_ellipse": int(missing.sum()),
    }


def _segment_item(
    item: tuple[str, str, str, str, float, float, str], params: dict[str, Any]
) -> dict:
    """Segment one enhanced image; for HC18 also score it against the sonographer outline.

    The last field of ``item`` is the U-Net folder for method ``unet`` ("" for the others).
    """
    from stages.ultrasound.imaging import load_item, read_image

    dataset, name, locator, ann_path, pixel_mm, hc_true_mm, unet_dir = item
    img = load_item(locator)
    seg = segment_image(img, params, load_segmenter(unet_dir))
    crop = brain_crop(img, seg, int(params["crop_size"]))
    row: dict[str, Any] = {
        "dataset": dataset,
        "image": name,
        "ok": seg.ok,
        "reason": seg.reason,
        **seg.ellipse_fields(),
        "skull_px": seg.skull_px,
        "score": seg.score,
        "hc_px": seg.hc_px(),
        "pixel_mm": pixel_mm,
        "hc_mm": seg.hc_px() * pixel_mm,
    }
    if ann_path:
        truth, te, degenerate = truth_mask(read_image(ann_path))
        row["dice"] = dice(seg.cranium, truth)
        row["truth_degenerate"] = degenerate
        row["hc_true_mm"] = hc_true_mm
        # signed (measured - sonographer) shows a bias; absolute is the headline error
        row["hc_signed_error_mm"] = row["hc_mm"] - hc_true_mm if seg.ok else np.nan
        row["hc_error_mm"] = abs(row["hc_signed_error_mm"]) if seg.ok else np.nan
    return {"row": row, "crop": crop, "labels": seg.label_image()}


def half_summaries(hc: pd.DataFrame) -> dict[str, float]:
    """:func:`hc18_summary` of the HC18 images the classical settings were tuned on (the
    first :data:`HC18_N_TUNE` by name: ``tune_*``) and of the rest (held out: ``heldout_*``)."""
    d = hc.sort_values("image").reset_index(drop=True)
    out: dict[str, float] = {}
    for label, part in (("tune", d.iloc[:HC18_N_TUNE]), ("heldout", d.iloc[HC18_N_TUNE:])):
        if len(part):
            summ = hc18_summary(part["dice"], part["hc_signed_error_mm"], part["hc_true_mm"])
            out |= {f"{label}_{k}": v for k, v in summ.items()}
    return out


def overlays_figure(tiles: list[tuple[str, np.ndarray, np.ndarray, str]], path: Any) -> None:
    """A grid of images with their cranium (red) and brain (green) outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.common.io import atomic_path

    cols = 4
    rows = max(1, math.ceil(len(tiles) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, img, labels, note) in zip(axes.ravel(), tiles, strict=False):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.contour(labels >= 1, levels=[0.5], colors="r", linewidths=0.8)
        ax.contour(labels >= 2, levels=[0.5], colors="lime", linewidths=0.6)
        ax.set_title(f"{name} {note}", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def main() -> None:
    import functools

    import pandas as pd

    from stages.common.io import atomic_dir, write_csv, write_json, write_npz
    from stages.common.parallel import map_images
    from stages.common.params import load_params, project_root
    from stages.ultrasound.imaging import load_item, store_items, write_store_chunk

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p, pdask, layout = load_params("segment_us"), load_params("dask"), load_params("enhance_us")
    root = project_root()
    enhanced, reports = root / "data/interim/us/enhanced", root / "data/reports"
    hc_csv = pd.read_csv(root / "data/raw/hc18/pixel_size_and_HC.csv")
    hc_info = {str(f)[:-4]: (float(px), float(hc)) for f, px, hc in hc_csv.itertuples(index=False)}
    uses_unet = p["method"] == "unet"
    folds = read_segmenter_folds(root / SEGMENTER_FOLDS) if uses_unet else {}
    items = []
    for dataset in ("fetal_planes", "hc18"):
        for name, loc in store_items(enhanced / dataset):
            px, hc = hc_info.get(name, (np.nan, np.nan)) if dataset == "hc18" else (np.nan, np.nan)
            ann = (
                str(root / "data/raw/hc18/images" / f"{name}_Annotation.png")
                if dataset == "hc18"
                else ""
            )
            unet = (
                str(segmenter_folder(dataset, name, folds, root / SEGMENTER_MODELS))
                if uses_unet
                else ""
            )
            items.append((dataset, name, loc, ann, px, hc, unet))
    res = map_images(functools.partial(_segment_item, params=p), items, pdask, desc="segment")
    done = [(it, r.value) for it, r in zip(items, res, strict=True) if r.ok]
    failures = [f"{it[0]}/{it[1]}: {r.error}" for it, r in zip(items, res, strict=True) if not r.ok]
    df = pd.DataFrame([v["row"] for _, v in done])
    with atomic_dir(root / "data/interim/us/segmented") as out:
        for dataset in ("fetal_planes", "hc18"):
            write_store_chunk(
                out / dataset,
                [(it[1], v["labels"]) for it, v in done if it[0] == dataset],
                layout["layout"],
                0,
            )
    write_npz(
        root / "data/processed/us/crops.npz",
        images=np.stack([v["crop"] for _, v in done]).astype(np.uint8),
        names=np.array([it[1] for it, _ in done]),
        datasets=np.array([it[0] for it, _ in done]),
    )
    write_csv(root / "data/processed/us/segmentation.csv", df)
    hc = df[df["dataset"] == "hc18"]
    report = (
        {
            "method": p["method"],
            "n": len(df),
            "n_hc18": len(hc),
            "n_failed": len(failures),
            "failures": failures,
            "n_no_ellipse": int((~df["ok"]).sum()),
            **{
                k: v
                for k, v in hc18_summary(
                    hc["dice"], hc["hc_signed_error_mm"], hc["hc_true_mm"]
                ).items()
                if k != "n_no_ellipse"  # the count above covers both datasets
            },
            **half_summaries(hc),
            # method unet: each HC18 image by the fold model that never saw it (out-of-fold)
            "hc18_out_of_fold": bool(uses_unet),
            "degenerate_truth": list(hc.loc[hc["truth_degenerate"].astype(bool), "image"]),
        }
        if len(hc)
        else {"method": p["method"], "n": len(df), "n_failed": len(failures), "failures": failures}
    )
    write_json(reports / "segment_us.json", report)
    show = hc.sort_values("dice").iloc[np.linspace(0, len(hc) - 1, min(8, len(hc))).astype(int)]
    show_items = {(it[0], it[1]): (it, v) for it, v in done}
    tiles = []
    for rr in list(show.itertuples()) + list(
        df[df["dataset"] == "fetal_planes"].head(4).itertuples()
    ):
        it, v = show_items[(rr.dataset, rr.image)]
        note = f"Dice {rr.dice:.3f}" if rr.dataset == "hc18" else ""
        tiles.append((rr.image, load_item(it[2]), v["labels"], note))
    (reports / "segment_us").mkdir(parents=True, exist_ok=True)
    overlays_figure(tiles, reports / "segment_us/overlays.png")
    log.info("segment_us: %s", {k: v for k, v in report.items() if k != "failures"})


__all__ = [
    "SEGMENTERS",
    "Segmentation",
    "brain_crop",
    "dice",
    "ellipse_from_outline",
    "ellipse_radius",
    "segment_image",
    "truth_mask",
]


if __name__ == "__main__":
    main()
