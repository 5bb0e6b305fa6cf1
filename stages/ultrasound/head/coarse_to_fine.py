"""Coarse-to-fine head segmentation: inference of one fold model or of the fold ensemble.

Coarse: the low-resolution U-Net's cranium probability -> candidate ellipses
(:func:`coarse_candidates`). Fine: the polar unwrap of the full-resolution enhanced image around
each candidate (:mod:`.polar`) -> the ray network's outline radius per direction (soft-argmax
of its softmax over the radius) -> a least-squares ellipse through those points, trimmed of
outliers (:func:`fit_rays`), twice (``passes``). Test-time, the mirrored unwrap too (a column
permutation); the two readings' disagreement is one of the quality signals (:mod:`.quality`).
Several models (the served ensemble of the fold models) are stacked into one Keras model and
their probabilities and ray radii averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.ultrasound.head import polar
from stages.ultrasound.head.geometry import fit_ellipse_points, ray_residual
from stages.ultrasound.head.polar import PolarGrid
from stages.ultrasound.head.settings import CoarseSettings, FineSettings
from stages.ultrasound.head.unet import ellipse_from_probability, to_input
from stages.ultrasound.head.unet_network import model_outputs, wrap_columns
from stages.ultrasound.imaging import Ellipse, dice, ellipse_mask, ramanujan_perimeter

NAN = float("nan")


@dataclass
class HeadResult:
    """One image's segmentation and the signals the quality flag reads (:mod:`.quality`)."""

    ellipse_px: np.ndarray | None  # final (cx, cy, a, b, angle_rad); None: no head found
    coarse_px: np.ndarray | None  # the coarse candidate the final ellipse grew from
    coarse_contrast: float  # probability contrast across the coarse ellipse (0-1)
    fit_residual: float  # RMS radial residual of the rays about the final ellipse (fraction)
    ray_spread: float  # median std (rows) of the per-ray outline distributions
    flip_change: float  # |HC(mirrored reading) / HC(plain reading) - 1|
    coarse_change: float  # |HC(fine) / HC(coarse) - 1|
    edge_share: float  # share of rays whose outline sits at the polar band's edge

    def signals(self) -> dict[str, float]:
        """The quality signals by name (the columns of the reports)."""
        names = ("coarse_contrast", "fit_residual", "ray_spread", "flip_change",
                 "coarse_change", "edge_share")  # fmt: skip
        return {k: float(getattr(self, k)) for k in names}


def no_head() -> HeadResult:
    return HeadResult(None, None, NAN, NAN, NAN, NAN, NAN, 1.0)


def hc_px(e: Sequence[float]) -> float:
    """Circumference (px) of an ellipse ``(cx, cy, a, b, angle)``: Ramanujan's perimeter."""
    return float(ramanujan_perimeter(e[2], e[3]))


def ray_outline(logits: np.ndarray, wrap_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column: expected row (soft-argmax) and std (rows) of the softmax over the radius."""
    z = logits[:, wrap_px:-wrap_px] if wrap_px else logits
    z = z - z.max(axis=0, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=0, keepdims=True)
    rows = np.arange(z.shape[0])[:, None]
    mu = (p * rows).sum(axis=0)
    sd = np.sqrt(np.maximum((p * (rows - mu) ** 2).sum(axis=0), 0))
    return mu, sd


def _relative_residual(x: np.ndarray, y: np.ndarray, e: Ellipse, r: np.ndarray) -> np.ndarray:
    pts = np.stack([x, y], 1)
    return ray_residual(pts, np.array([[e.cx, e.cy, e.a, e.b, e.angle_rad]]))[0] / r


def fit_rays(
    coarse_px: np.ndarray, rho: np.ndarray, grid: PolarGrid, rounds: int = 3
) -> tuple[np.ndarray | None, float]:
    """Ellipse through the ray points (``rho`` per column of ``grid`` around ``coarse_px``),
    refitted ``rounds`` times without the points more than 2.5 x the median residual off (at
    least 0.5 % of the radius); returns it and the RMS relative residual of ALL rays (a broken
    outline keeps a large residual; the trimmed fit alone would hide it)."""
    x, y = polar.points_from_rho(coarse_px, rho, grid)
    r = np.hypot(x - coarse_px[0], y - coarse_px[1])
    keep = np.isfinite(x) & np.isfinite(y)
    e = None
    for _ in range(rounds + 1):
        if keep.sum() < 8:
            break
        e = fit_ellipse_points(x[keep], y[keep])
        if e is None:
            return None, NAN
        res = _relative_residual(x, y, e, r)
        new = keep & (res <= max(2.5 * float(np.median(res[keep])), 0.005))
        if (new == keep).all():
            break
        keep = new
    if e is None:
        return None, NAN
    res = _relative_residual(x, y, e, r)
    return np.array([e.cx, e.cy, e.a, e.b, e.angle_rad]), float(np.sqrt(np.mean(res**2)))


def coarse_probability(coarse: Any, images: Sequence[np.ndarray], cs: CoarseSettings) -> np.ndarray:
    """Mean cranium probability (N, h, w) of the coarse model (or stack of models)."""
    x = np.stack([to_input(im, cs.input_hw) for im in images])
    return np.mean([1.0 / (1.0 + np.exp(-z)) for z in model_outputs(coarse, x)], axis=0)


def coarse_candidates(
    prob: np.ndarray, shape: tuple[int, int], cs: CoarseSettings
) -> list[tuple[np.ndarray, float]]:
    """Coarse ellipses ``(cx, cy, a, b, angle)`` in image pixels with their probability contrast.

    1. The ellipse through the 0.5 contour (:func:`~.unet.ellipse_from_probability`).
    2. The same on the 0.5 mask's largest region after a morphological opening by a disc of
       ``opening_fracs`` x its inscribed radius: a small head that the network fused with the
       body or the sac through a thinner neck comes apart from it (HC18's 096_HC, one fold
       model: +66.7 -> +2.5 mm).
    """
    from scipy.ndimage import binary_opening, distance_transform_edt, label

    out = []
    e, score = ellipse_from_probability(prob, shape, 0.5, limits=cs.limits, seed=0)
    if e is not None:
        out.append((np.array([e.cx, e.cy, e.a, e.b, e.angle_rad]), float(score)))
    mask = prob >= 0.5
    if not mask.any():
        return out
    labels, _ = label(mask)
    big = labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)
    inscribed = float(distance_transform_edt(big).max())
    for frac in cs.opening_fracs:
        r = max(1, int(round(frac * inscribed)))
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        opened = binary_opening(big, xx * xx + yy * yy <= r * r)
        if not opened.any() or np.array_equal(opened, big):
            continue
        e2, s2 = ellipse_from_probability(
            np.where(opened, prob, np.minimum(prob, 0.49)), shape, 0.5, limits=cs.limits, seed=0
        )
        if e2 is not None:
            out.append((np.array([e2.cx, e2.cy, e2.a, e2.b, e2.angle_rad]), float(s2)))
    return out


def _read_rays(
    outs: list[np.ndarray], j: int, fs: FineSettings
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Plain and mirrored ray rows of unwrap ``j`` (rows ``2j`` and ``2j + 1`` of each model's
    output), the mirrored ones put back in plain column order, and the mean per-ray std."""
    mirror = polar.mirror_columns(fs.n_angles)
    plain, flipped, sds = [], [], []
    for logits in outs:
        mu0, sd0 = ray_outline(logits[2 * j], fs.wrap_px)
        mu1, sd1 = ray_outline(logits[2 * j + 1], fs.wrap_px)
        plain.append(mu0)
        flipped.append(mu1[mirror])
        sds += [sd0, sd1[mirror]]
    return plain, flipped, np.mean(sds, axis=0)


def _pass_signals(
    e0: np.ndarray, plain: list[np.ndarray], flipped: list[np.ndarray], sd: np.ndarray,
    grid: PolarGrid,
) -> tuple[np.ndarray | None, dict[str, float]]:  # fmt: skip
    """The ellipse of one pass around ``e0`` (rays averaged over models and flips) and its
    signals: fit residual, ray spread, edge share and the plain-vs-mirrored HC change."""
    mu = np.mean([*plain, *flipped], axis=0)
    e, resid = fit_rays(e0, grid.index_to_rho(mu), grid)
    spread = float(np.median(sd))
    if e is None:
        return None, {"fit_residual": NAN, "ray_spread": spread, "flip_change": NAN,
                      "edge_share": 1.0}  # fmt: skip
    a = fit_rays(e0, grid.index_to_rho(np.mean(plain, axis=0)), grid)[0]
    b = fit_rays(e0, grid.index_to_rho(np.mean(flipped, axis=0)), grid)[0]
    flip = abs(hc_px(a) / hc_px(b) - 1) if a is not None and b is not None else NAN
    edge = float(np.mean((mu < 1.0) | (mu > grid.n_radii - 2.0)))
    return e, {"fit_residual": resid, "ray_spread": spread, "flip_change": flip,
               "edge_share": edge}  # fmt: skip


def fine_refine(
    fine: Any, images: Sequence[np.ndarray], coarse_px: Sequence[np.ndarray], fs: FineSettings
) -> list[tuple[np.ndarray | None, dict[str, float]]]:
    """The fine stage around coarse ellipses (image ``i`` around ``coarse_px[i]``).

    ``passes`` unwraps, each read by the fine model (or stack) on the unwrap and its mirror;
    all images of a pass go through the network in one batch (TensorFlow's per-call cost, not
    the arithmetic, dominated a per-image call). Returns the ellipse (None: no fit) and the
    signals of :func:`_pass_signals` per image.
    """
    g, mirror = fs.grid, polar.mirror_columns(fs.n_angles)
    e0s: list[np.ndarray | None] = [np.asarray(c, float) for c in coarse_px]
    sigs: list[dict[str, float]] = [{} for _ in images]
    for _ in range(fs.passes):
        live = [i for i, e in enumerate(e0s) if e is not None]
        if not live:
            break
        us = [polar.polar_unwrap(images[i], e0s[i], g) / 255.0 for i in live]
        x = np.stack([v for u in us for v in (u, u[:, mirror])]).astype(np.float32)
        outs = model_outputs(fine, wrap_columns(x, fs.wrap_px))
        for j, i in enumerate(live):
            plain, flipped, sd = _read_rays(outs, j, fs)
            e0s[i], sigs[i] = _pass_signals(e0s[i], plain, flipped, sd, g)
    return list(zip(e0s, sigs, strict=True))


def segment_images(
    coarse: Any, fine: Any, images: Sequence[np.ndarray], cs: CoarseSettings, fs: FineSettings
) -> list[HeadResult]:
    """Coarse-to-fine ellipses of full-resolution enhanced uint8 images.

    ``coarse`` / ``fine``: a fold's model, or a stack of the fold models
    (:func:`~.unet_network.stack_models`: probabilities and ray radii averaged). Every coarse
    candidate is read by the fine stage; the most confident reading (lowest median ray spread)
    wins. When no candidate's fine fit succeeds, the first coarse candidate stands in with its
    fine signals missing (flagged by :func:`~.quality.quality_flag`): a coarse head is off by a
    few millimetres, "no ellipse" by its whole circumference.
    """
    prob = coarse_probability(coarse, images, cs)
    cands = [coarse_candidates(p, im.shape, cs) for im, p in zip(images, prob, strict=True)]
    flat = [(i, ec, score) for i, c in enumerate(cands) for ec, score in c]
    read = fine_refine(fine, [images[i] for i, _, _ in flat], [ec for _, ec, _ in flat], fs)
    best: dict[int, tuple] = {}
    for (i, ec, score), (ef, sig) in zip(flat, read, strict=True):
        spread = sig["ray_spread"] if ef is not None else np.inf
        if i not in best or spread < best[i][0]:
            best[i] = (spread, ec, score, ef, sig)
    out = []
    for i in range(len(images)):
        if i not in best:
            out.append(no_head())
            continue
        _, ec, score, ef, sig = best[i]
        if ef is None:  # every fine fit failed: the coarse ellipse stands in, signals missing
            ef, change = ec, NAN
        else:
            change = abs(hc_px(ef) / hc_px(ec) - 1)
        out.append(HeadResult(ef, ec, score, sig["fit_residual"], sig["ray_spread"],
                              sig["flip_change"], change, sig["edge_share"]))  # fmt: skip
    return out


def score_results(
    results: Sequence[HeadResult], truths: Sequence[np.ndarray], pixel_mm: np.ndarray,
    hc_true_mm: np.ndarray,
) -> list[dict[str, float]]:  # fmt: skip
    """Dice against the filled outline and signed HC error (mm) per image; no ellipse: Dice 0
    and NaN errors."""
    rows = []
    for r, t, px, hc in zip(results, truths, pixel_mm, hc_true_mm, strict=True):
        if r.ellipse_px is None:
            rows.append({"dice": 0.0, "hc_mm": NAN, "hc_error_mm": NAN, "hc_true_mm": hc})
            continue
        m = ellipse_mask(t.shape, Ellipse(*map(float, r.ellipse_px)))
        h = hc_px(r.ellipse_px) * px
        rows.append({"dice": dice(m, t), "hc_mm": h, "hc_error_mm": h - hc, "hc_true_mm": hc})
    return rows
