"""The classical skull-ellipse method (``segment_us.method: classical``).

At ``work_width`` columns:

1. Smooth; from a few candidate centres cast rays and keep, on each ray, the radii where the
   profile falls from bright (skull) to dark (fluid/soft tissue) the most: the outer skull edge,
   which is where HC18 sonographers draw the outline.
2. RANSAC over those points with a vectorised 5-point conic fit (thousands of hypotheses per
   millisecond), then a least-squares refit on the inliers, re-casting rays from the new centre.
3. Every candidate ellipse is scored by its boundary contrast (mean brightness just inside the
   outline minus just outside, over the part of the outline inside the image) times the share
   of rays that support it; the best one wins. With ``rescore_top`` > 0 the best few are first
   refined (step 4) at ``work_width_px`` and ranked again with ``score`` (:data:`SCORERS`): the
   ``ring`` scores also ask the skull to be brighter than the brain inside it, which rejects
   outlines drawn around the uterine wall or along a bright arc inside the head.
4. With ``refine_width`` > 0 the winner is refitted at that width to one edge per ray, placed
   on the skull band as ``refine_edge`` says (:data:`EDGE_LOCATORS`). HC18 sonographers draw on
   the outer flank of the skull echo, about three quarters of the way up from the dark outside
   to the ridge (``refine_level`` 0.75); the strongest box-filter drop lands ~2.5 % outside it.

The settings are :class:`stages.ultrasound.head.settings.SegmentSettings` (the ``segment_us``
section). The original study's threshold method is a research variant
(``experiments/ultrasound/segmentation.py``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np

from stages.ultrasound.head.geometry import (
    conic_to_ellipse,
    covered_mean,
    fit_conic,
    plausible,
    ray_residual,
)
from stages.ultrasound.head.settings import SegmentSettings
from stages.ultrasound.imaging import Ellipse, resize_to_width

# --------------------------------------------------------------------------- candidates


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


def _contrast_score(g: np.ndarray, params: np.ndarray, n: int = 96, band: float = 0.06):
    """Boundary contrast of ellipses ``params`` (m, 5): mean(inside band) - mean(outside band),
    weighted by the covered share of the outline (:func:`covered_mean`)."""
    sample = _band_sampler(g, params, n)
    # out-of-image samples are NaN; averaging over none of them is expected, not a problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        inner = np.nanmean(np.stack([sample(1 - band), sample(1 - band / 2)]), axis=0)
        outer = np.nanmean(np.stack([sample(1 + band), sample(1 + band * 1.5)]), axis=0)
        return covered_mean(inner - outer)


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
        return covered_mean(skull - dark)


# how candidate ellipses are ranked (``score``)
SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "contrast": _contrast_score,
    "ring": _ring_score,
    "ring_mean": functools.partial(_ring_score, combine="mean"),
}


def _conic_hypotheses(
    flat: np.ndarray, ray_line: np.ndarray, rng: np.random.Generator, n_hypotheses: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n_hypotheses`` conics through 5 random edge points of ``flat`` (n, 2), as ellipses
    (m, 5) with a validity flag; ``ray_line`` is the line through the centre each point's ray
    lies on."""
    m = int(n_hypotheses)
    pick = rng.integers(0, len(flat), size=(m, 5))
    P = flat[pick]  # (m, 5, 2)
    x, y = P[..., 0], P[..., 1]
    M = np.stack([x * x, x * y, y * y, x, y], axis=2)
    # The 5x5 system is singular (np.linalg.solve raises) when a point is drawn twice or three
    # points lie on one line through the centre (one ray and its opposite: y = kx makes their
    # rows span two dimensions). Finding those draws is 5x cheaper than a determinant of every
    # system, which is only the fallback for a rare singular system left.
    line = ray_line[pick]
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
    return ell, valid & good


def _ray_share(grid: np.ndarray, ell: np.ndarray, tol_px: float, n_rays: int) -> np.ndarray:
    """Share of rays (m,) supporting each ellipse of ``ell`` (m, 5): a ray supports an ellipse
    once, whichever of its top-k edges (``grid``, (n_rays * top_k, 2)) lies within ``tol_px``."""
    with np.errstate(invalid="ignore"):
        d = ray_residual(grid, ell).reshape(len(ell), n_rays, -1)
        return (np.nan_to_num(d, nan=np.inf) < tol_px).any(axis=2).mean(axis=1)


def _ransac_from_centre(
    g: np.ndarray,
    cx: float,
    cy: float,
    rng: np.random.Generator,
    settings: SegmentSettings,
    n_hypotheses: int,
) -> tuple[np.ndarray, float] | None:
    """Best ellipse (cx, cy, a, b, th) from rays cast at (cx, cy) and the share of rays on it,
    out of ``n_hypotheses`` random 5-point conics."""
    h, w = g.shape
    n_rays, top_k = settings.n_rays, settings.top_k
    r_max = float(np.hypot(h, w)) * 0.6
    pts, strength = _boundary_points(g, cx, cy, n_rays, r_max, top_k, settings.edge_px)
    ok = np.isfinite(strength) & (strength > 0)
    grid = np.where(ok[..., None], pts, np.nan).reshape(-1, 2)  # (n_rays * top_k, 2)
    flat = grid[ok.ravel()]
    if len(flat) < 8:
        return None
    n_lines = n_rays // 2 if n_rays % 2 == 0 else n_rays
    ell, valid = _conic_hypotheses(
        flat, np.flatnonzero(ok.ravel()) // top_k % n_lines, rng, n_hypotheses
    )
    valid &= plausible_axes(ell, w, settings)
    if not valid.any():
        return None
    ell = ell[valid]
    tol = settings.inlier_px
    e = ell[int(np.argmax(_ray_share(grid, ell, tol, n_rays)))]
    for _ in range(3):  # least-squares refits on the inliers
        sel = ray_residual(flat, e[None, :])[0] < tol * 1.5
        if sel.sum() < 6:
            break
        ee, vv = conic_to_ellipse(fit_conic(flat[sel, 0], flat[sel, 1])[None, :])
        if not vv[0]:
            break
        e = ee[0]
    share = float(_ray_share(grid, e[None, :], tol, n_rays)[0])
    e = e.copy()
    e[0] += cx
    e[1] += cy
    return e, share


def plausible_axes(ell: np.ndarray, width_px: int, settings: SegmentSettings) -> np.ndarray:
    """The axis-size and axis-ratio part of :func:`~stages.ultrasound.head.geometry.plausible`
    for RANSAC hypotheses (m, 5) (their centres are relative, their values may be NaN)."""
    lim = settings.limits
    with np.errstate(invalid="ignore"):
        a, b = ell[:, 2], ell[:, 3]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        return (
            (lo > lim.min_axis_frac * width_px)
            & (hi < lim.max_axis_frac * width_px)
            & (lo / np.maximum(hi, 1e-9) > lim.min_axis_ratio)
        )


def _ray_profiles(
    g: np.ndarray, e: np.ndarray, n_rays: int, band: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Samples of ``g`` along ``n_rays`` rays through ellipse ``e``'s outline, within +-``band``
    of its radius: profiles (rays, samples), each ray's radius and unit direction, the relative
    radius of each sample and each sample's radius (rays, samples)."""
    from scipy.ndimage import map_coordinates

    cx, cy, a, b, th = e
    t = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    base = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
    c, s = np.cos(th), np.sin(th)
    dirs = np.stack([base[:, 0] * c - base[:, 1] * s, base[:, 0] * s + base[:, 1] * c], axis=1)
    rad = np.linalg.norm(dirs, axis=1)
    unit = dirs / rad[:, None]
    rs = np.arange(-band, band + 1e-9, 0.5 / max(rad.mean(), 1))  # fraction of radius
    R = rad[:, None] * (1 + rs[None, :])
    xs, ys = cx + unit[:, 0:1] * R, cy + unit[:, 1:2] * R
    prof = map_coordinates(g, [ys, xs], order=1, cval=np.nan)
    return prof, rad, unit, rs, R


def _usable_rays(
    drop: np.ndarray, valid_ray: np.ndarray, min_rel: float
) -> np.ndarray:  # fmt: skip
    """Rays whose edge is at least ``min_rel`` x the median strength (0 keeps all), unless
    that leaves fewer than 12. Weak edges (the lateral skull, parallel to the beam, echoes
    faintly; there the strongest drop is often soft tissue or the sector border) are left out
    of the fit."""
    strength = np.max(np.where(np.isfinite(drop), drop, -np.inf), axis=1)
    if min_rel > 0 and valid_ray.any():
        strong = strength >= min_rel * np.median(strength[valid_ray])
        if (valid_ray & strong).sum() >= 12:
            return valid_ray & strong
    return valid_ray


def _robust_ellipse(
    px: np.ndarray, py: np.ndarray, cx: float, cy: float, e: np.ndarray
) -> np.ndarray:  # fmt: skip
    """A least-squares conic through points (relative to ``(cx, cy)``), refitted once without
    the points more than 2.5 MAD off; ``e`` when no ellipse fits."""
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
        res = ray_residual(np.stack([px + cx, py + cy], axis=1), out[None, :])[0]
        mad = np.median(res) + 1e-6
        sel = res < max(2.5 * mad, 1.0)
    return out


def refine(
    g: np.ndarray, e: np.ndarray, settings: SegmentSettings, edge_window_px: int
) -> np.ndarray:
    """Re-fit ``e`` (cx, cy, a, b, th, in ``g`` pixels) to the strongest drop near its outline.

    ``settings.refine_rays`` rays from the centre, searched only in a band of
    +-``settings.refine_band`` of the radius, give one edge per ray at the finer resolution of
    ``g`` (edge detector half-window ``edge_window_px``,
    :meth:`~stages.ultrasound.head.settings.SegmentSettings.edge_window_px`), placed on the
    skull band by ``refine_edge`` at ``refine_level``; rays weaker than ``refine_min_strength``
    x the median are left out (0 keeps all). A robust least-squares conic
    through them (two rounds, dropping points more than 2 MAD away) is the result.
    """
    n = settings.refine_rays
    prof, rad, unit, rs, R = _ray_profiles(g, e, n, settings.refine_band)
    step = R[:, 1] - R[:, 0]
    kk = int(np.median(np.maximum(1, np.round(edge_window_px / step)).astype(int)))
    if prof.shape[1] < 2 * kk + 3:  # search band too short for the edge filter: keep ``e``
        return e
    cs = np.nancumsum(np.concatenate([np.zeros((n, 1)), prof], axis=1), axis=1)
    j = np.arange(kk, prof.shape[1] - kk)
    drop = (cs[:, j] - cs[:, j - kk]) / kk - (cs[:, j + kk] - cs[:, j]) / kk
    valid_ray = np.isfinite(prof).all(axis=1)
    if valid_ray.sum() < 12:
        return e
    best = j[np.argmax(drop, axis=1)]
    valid_ray = _usable_rays(drop, valid_ray, settings.refine_min_strength)
    pos = EDGE_LOCATORS[settings.refine_edge](
        np.where(np.isfinite(prof), prof, 0.0), best, 3 * kk, settings.refine_level
    )
    rad_at = rad * (1 + rs[0] + pos * (rs[1] - rs[0]))  # fractional sample index -> radius
    px = (unit[:, 0] * rad_at)[valid_ray]
    py = (unit[:, 1] * rad_at)[valid_ray]
    return _robust_ellipse(px, py, e[0], e[1], e)


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


# how :func:`refine` places the outline on each ray across the bright skull band (``refine_edge``)
EDGE_LOCATORS: dict[str, Callable[[np.ndarray, np.ndarray, int, float], np.ndarray]] = {
    "drop": _edge_drop,
    "ridge": _edge_ridge,
    "level": _edge_level,
}


def _dedupe(cands: list[np.ndarray], tol_px: float) -> list[int]:
    """Indices of candidates that differ (centre or axes) by more than ``tol_px``."""
    keep: list[int] = []
    for i, e in enumerate(cands):
        if all(np.abs(e[:4] - cands[j][:4]).max() > tol_px for j in keep):
            keep.append(i)
    return keep


def _candidates(
    g: np.ndarray, rng: np.random.Generator, s: SegmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ellipses (m, 5) of the smoothed work image ``g`` and their ray shares (m,).

    A grid of centres over the middle of the image (the head is rarely at the rim) with
    ``n_hypotheses_grid`` draws each, which only has to land near the head; then a re-cast from
    each distinct fitted centre with the full ``n_hypotheses``: rays then cross the outline
    nearly at right angles.
    """
    h, w = g.shape
    n = s.grid
    centres = [(w * a, h * b) for a in np.linspace(0.25, 0.75, n) for b in np.linspace(0.3, 0.7, n)]
    first = [
        r
        for r in (_ransac_from_centre(g, cx, cy, rng, s, s.n_hypotheses_grid) for cx, cy in centres)
        if r
    ]
    cands: list[np.ndarray] = []
    shares: list[float] = []
    for i in _dedupe([e for e, _ in first], 0.03 * w):
        e, share = first[i]
        if 0 <= e[0] < w and 0 <= e[1] < h:
            res = _ransac_from_centre(g, e[0], e[1], rng, s, s.n_hypotheses)
            if res is not None:
                e, share = res
        cands.append(e)
        shares.append(share)
    return np.array(cands), np.asarray(shares)


def _rescored(
    g: np.ndarray, E: np.ndarray, shares: np.ndarray, score: np.ndarray, s: SegmentSettings
) -> tuple[np.ndarray, float]:
    """The best ``rescore_top`` candidates refined at work resolution and ranked again with
    ``score`` (:data:`SCORERS`): a roughly placed head outline snaps onto the skull and can
    overtake a candidate that merely looked better. Returns the winner and its contrast."""
    w = g.shape[1]
    idx = np.argsort(-score)[: s.rescore_top]
    R = np.array([refine(g, E[i], s, s.edge_window_px(w)) for i in idx])
    bad = ~plausible(R, w, s.limits)  # a refit that collapsed or ran away is not used
    R[bad] = E[idx[bad]]
    rank = SCORERS[s.score](g, R) * shares[idx]
    j = int(np.argmax(rank))
    return R[j], float(_contrast_score(g, R[j][None, :])[0] * shares[idx[j]])


def refine_at_width(
    x: np.ndarray, e: Ellipse, width_px: int, sigma_px: float, s: SegmentSettings
) -> np.ndarray | None:
    """:func:`refine` of ``e`` (in pixels of ``x`` resized to ``width_px``) on ``x`` (float,
    [0, 1]) resized to ``width_px`` and smoothed by ``sigma_px``; the re-fitted ellipse
    (cx, cy, a, b, th) in those pixels, or None when it is implausible."""
    from scipy.ndimage import gaussian_filter

    fine, _ = resize_to_width(x, width_px)
    fine = gaussian_filter(fine, sigma_px)
    e2 = refine(
        fine, np.array([e.cx, e.cy, e.a, e.b, e.angle_rad]), s, s.edge_window_px(fine.shape[1])
    )
    return e2 if plausible(e2[None, :], fine.shape[1], s.limits)[0] else None


def classical_ellipse(
    img_u8: np.ndarray, settings: SegmentSettings
) -> tuple[Ellipse | None, float, str]:
    """The classical method on one 2-D uint8 image: ``(ellipse in image pixels or None,
    boundary-contrast score, reason when None)``."""
    from scipy.ndimage import gaussian_filter

    s = settings
    x = img_u8.astype(np.float64) / 255.0
    small, scale = resize_to_width(x, min(s.work_width, img_u8.shape[1]))
    g = gaussian_filter(small, s.smooth_px)
    E, shares = _candidates(g, np.random.default_rng(s.seed), s)
    if not len(E):
        return None, float("nan"), "no ellipse candidate"
    score = _contrast_score(g, E) * shares
    best = int(np.argmax(score))
    if not np.isfinite(score[best]) or score[best] <= s.min_score:
        return None, float(score[best]), "no ellipse with enough boundary contrast"
    if s.rescore_top:
        e, best_score = _rescored(g, E, shares, score, s)
    else:
        e, best_score = E[best], float(score[best])
    out = Ellipse(*map(float, e)).scaled(1 / scale)
    if s.refine_width:
        fine_w = min(s.refine_width, img_u8.shape[1])
        fscale = fine_w / img_u8.shape[1]  # as resize_to_width computes it
        # the work image's smoothing, in pixels of the refinement's width
        e2 = refine_at_width(
            x, Ellipse(*e).scaled(fscale / scale), fine_w, s.smooth_px * fscale / scale, s
        )
        if e2 is not None:
            out = Ellipse(*map(float, e2)).scaled(1 / fscale)
    return out.canonical(), best_score, ""
