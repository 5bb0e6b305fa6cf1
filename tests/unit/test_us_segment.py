"""Skull ellipse segmentation on phantom heads whose ellipse and circumference are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.common.parallel import Result, map_images
from stages.ultrasound.head import Segmentation
from stages.ultrasound.head.geometry import brain_crop, conic_to_ellipse, fit_ellipse_points
from stages.ultrasound.head.hc18 import truth_mask
from stages.ultrasound.head.segmenters import segment_image
from stages.ultrasound.imaging import Ellipse, dice, ellipse_mask, ramanujan_perimeter
from tests.synth_us import (
    CLASSICAL_BASIC,
    outline_annotation,
    phantom_head,
    phantom_non_brain,
    segment_settings,
)

pytestmark = pytest.mark.unit

SEG = CLASSICAL_BASIC


def test_conic_round_trip():
    e = Ellipse(3.0, -2.0, 40.0, 25.0, 0.6)
    pts = np.array(
        [
            [x, y]
            for x, y in __import__("stages.ultrasound.imaging", fromlist=["x"]).ellipse_points(
                e, 50
            )
        ]
    )
    fit = fit_ellipse_points(pts[:, 0] + 100, pts[:, 1] + 100)
    assert fit is not None
    assert (fit.cx - 100, fit.cy - 100, fit.a, fit.b) == pytest.approx((3, -2, 40, 25), abs=1e-6)
    assert fit.angle_rad == pytest.approx(0.6, abs=1e-6)
    _, valid = conic_to_ellipse(np.array([[1.0, 0.0, -1.0, 0.0, 0.0]]))  # a hyperbola
    assert not valid[0]


@pytest.mark.parametrize("seed, angle, noise", [(0, 0.3, 0.25), (1, 1.2, 0.4), (2, 2.5, 0.3)])
def test_phantom_head_circumference_and_dice(seed, angle, noise):
    img, true = phantom_head((260, 380), axes=(110, 85), angle=angle, noise=noise, seed=seed)
    seg = segment_image(img, segment_settings(**SEG))
    assert seg.ok, seg.reason
    hc_true = ramanujan_perimeter(true.a, true.b)
    assert seg.hc_px() == pytest.approx(hc_true, rel=0.03)
    assert dice(seg.cranium, ellipse_mask(img.shape, true)) > 0.95
    # the brain lies inside the cranium and is smaller by about the skull
    assert seg.brain.sum() < seg.cranium.sum() and not (seg.brain & ~seg.cranium).any()
    assert seg.skull_px == pytest.approx(0.06 * 110, rel=0.6)


def test_head_off_centre_and_partly_out_of_view():
    img, true = phantom_head((260, 380), center=(110, 120), axes=(120, 95), angle=0.2, seed=5)
    seg = segment_image(img, segment_settings(**SEG))
    truth = ellipse_mask(img.shape, true)
    assert seg.ok and dice(seg.cranium, truth) > 0.93


def test_no_head_gives_ok_false_or_low_score_never_a_crash():
    flat = np.full((200, 300), 40, np.uint8)
    seg = segment_image(flat, segment_settings(**SEG))
    assert isinstance(seg, Segmentation)
    assert not seg.ok
    crop = brain_crop(flat, seg, 32)
    assert crop.shape == (32, 32) and crop.dtype == np.uint8


def test_non_brain_image_runs():
    seg = segment_image(
        phantom_non_brain((200, 300), "Fetal femur", seed=1), segment_settings(**SEG)
    )
    assert isinstance(seg.ok, bool)


def test_brain_crop_normalises_orientation_and_size():
    """Two heads differing in size and rotation give nearly the same crop."""
    a, ea = phantom_head((260, 380), axes=(100, 80), angle=0.0, noise=0.0, seed=7)
    b, eb = phantom_head((260, 380), axes=(70, 56), angle=1.0, noise=0.0, seed=7)
    ca = brain_crop(a, Segmentation(True, ea, a.shape), 64)
    cb = brain_crop(b, Segmentation(True, eb, b.shape), 64)
    assert ca.shape == cb.shape == (64, 64) and ca.dtype == np.uint8
    assert np.abs(ca.astype(int) - cb.astype(int)).mean() < 12
    # the skull ring reaches the crop's border region, the centre is brain
    assert ca[32, 2:8].max() > 150 and ca[28:36, 28:36].mean() < 120


def test_truth_mask_fills_outline_and_handles_open_outline():
    e = Ellipse(150.0, 100.0, 80.0, 60.0, 0.3)
    outline = outline_annotation((200, 300), e)
    mask, fit, degenerate = truth_mask(outline)
    assert not degenerate and dice(mask, ellipse_mask((200, 300), e)) > 0.98
    # an outline running off the image (HC18 628_2HC) does not close: fit instead of fill
    e_off = Ellipse(40.0, 100.0, 80.0, 60.0, 0.0)
    open_outline = outline_annotation((200, 300), e_off)
    open_outline[:, 0] = 0
    mask, fit, degenerate = truth_mask(open_outline)
    assert degenerate and fit is not None
    assert fit.a == pytest.approx(80, rel=0.03)
    assert dice(mask, ellipse_mask((200, 300), e_off)) > 0.97


def _maybe_fail(x: int) -> int:
    if x == 3:
        raise ValueError("bad item")
    return x * x


def test_map_images_keeps_order_and_catches_errors():
    res = map_images(_maybe_fail, list(range(6)), {"scheduler_address": ""})
    assert [r.value for r in res if r.ok] == [0, 1, 4, 16, 25]
    assert res[3] == Result(False, None, "ValueError: bad item")


def test_hc_recovered_within_a_few_percent_across_sizes():
    errs = []
    for seed, a in enumerate((70, 95, 125)):
        img, true = phantom_head((280, 400), axes=(a, 0.8 * a), angle=0.1 * seed, seed=10 + seed)
        seg = segment_image(img, segment_settings(**SEG))
        errs.append(abs(seg.hc_px() / ramanujan_perimeter(true.a, true.b) - 1))
    assert max(errs) < 0.04, errs
    assert math.isfinite(sum(errs))


# --------------------------------------------------------------------------- edge placement


def _ring_image(shape=(300, 400), axes=(110.0, 85.0), thick=12.0, blur=1.5):
    """A noise-free bright elliptic ring (outer semi-axes ``axes``) on a dark field, blurred."""
    from scipy.ndimage import gaussian_filter

    e = Ellipse(shape[1] / 2, shape[0] / 2, axes[0], axes[1], 0.3)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    from stages.ultrasound.imaging import ellipse_radius

    r = np.maximum(ellipse_radius(xx, yy, e), 1e-6)
    # px inwards from the outer outline along the ray from the centre (how refine looks)
    depth = np.hypot(xx - e.cx, yy - e.cy) * (1 / r - 1)
    img = np.where((depth >= 0) & (depth <= thick), 220.0, np.where(depth > 0, 60.0, 20.0))
    return np.clip(gaussian_filter(img, blur), 0, 255).astype(np.uint8), e


def test_edge_locators_on_a_gaussian_skull_profile():
    from stages.ultrasound.head.classical import EDGE_LOCATORS

    j = np.arange(80, dtype=float)
    prof = np.exp(-0.5 * ((j - 30) / 5.0) ** 2)[None, :]  # skull ridge at 30, sigma 5
    drop = np.array([36])
    ridge = EDGE_LOCATORS["ridge"](prof, drop, 20, 0.5)
    half = EDGE_LOCATORS["level"](prof, drop, 20, 0.5)
    three_q = EDGE_LOCATORS["level"](prof, drop, 20, 0.75)
    assert ridge[0] == pytest.approx(30)
    assert half[0] == pytest.approx(30 + 5 * math.sqrt(2 * math.log(2)), abs=0.15)
    assert three_q[0] == pytest.approx(30 + 5 * math.sqrt(2 * math.log(4 / 3)), abs=0.15)
    assert EDGE_LOCATORS["drop"](prof, drop, 20, 0.5)[0] == 36


@pytest.mark.parametrize(
    "edge, level, inward_px",
    [("level", 0.5, 0.0), ("ridge", 0.5, 6.0), ("level", 0.75, None)],
)
def test_refined_outline_lands_on_the_chosen_edge_of_the_skull_band(edge, level, inward_px):
    img, e = _ring_image(thick=12.0)
    p = dict(SEG, refine_width=img.shape[1], refine_edge=edge, refine_level=level)
    seg = segment_image(img, segment_settings(**p))
    assert seg.ok, seg.reason
    got = 0.5 * (seg.ellipse.a + seg.ellipse.b)
    outer = 0.5 * (e.a + e.b)
    if inward_px is None:  # between the ridge (6 px in) and the half-maximum of the outer flank
        assert outer - 6.0 < got < outer - 0.3
    else:
        assert got == pytest.approx(outer - inward_px, abs=1.0)


def test_ring_scores_prefer_the_skull_to_an_outline_around_or_inside_it():
    from stages.ultrasound.head.classical import SCORERS

    img, e = _ring_image()
    g = img / 255.0
    E = np.array([[e.cx, e.cy, e.a * s, e.b * s, e.angle_rad] for s in (1.0, 1.3, 0.7)])
    for name in ("ring", "ring_mean"):
        sc = SCORERS[name](g, E)
        assert sc[0] > sc[1] and sc[0] > sc[2], (name, sc)


@pytest.mark.parametrize("seed, angle", [(0, 0.3), (1, 1.2)])
def test_rescored_and_refined_phantom_heads(seed, angle):
    img, true = phantom_head((260, 380), axes=(110, 85), angle=angle, noise=0.3, seed=seed)
    p = dict(
        SEG,
        rescore_top=4,
        score="ring_mean",
        refine_width=380,
        refine_edge="level",
        refine_level=0.75,
    )
    seg = segment_image(img, segment_settings(**p))
    assert seg.ok, seg.reason
    assert seg.hc_px() == pytest.approx(ramanujan_perimeter(true.a, true.b), rel=0.03)
    assert dice(seg.cranium, ellipse_mask(img.shape, true)) > 0.95


@pytest.mark.parametrize("seed", range(6))
def test_ransac_survives_singular_draws_and_finds_the_ring(seed):
    """Few rays with three edges each make many 5-point draws singular (three points on one
    line through the centre, or one point twice; with 12 rays ``np.linalg.solve`` raises on
    these draws); they are skipped, never raised, whatever the seed."""
    from stages.ultrasound.head.classical import _ransac_from_centre

    img, e = _ring_image()
    g = img / 255.0
    p = {"n_rays": 12, "top_k": 3, "edge_px": 3, "inlier_px": 2.5, "min_axis_ratio": 0.55}
    s = segment_settings(**SEG, **p)
    res = _ransac_from_centre(g, e.cx + 7, e.cy - 5, np.random.default_rng(seed), s, 1500)
    assert res is not None
    fit, share = res
    assert share > 0.5
    assert fit[:2] == pytest.approx([e.cx, e.cy], abs=2.0)
    assert sorted(fit[2:4]) == pytest.approx(sorted([e.a, e.b]), abs=3.0)


def test_an_unknown_method_is_an_error_naming_the_key():
    img, _ = phantom_head((120, 160), seed=0)
    with pytest.raises(ValueError, match="segment_us.method 'threshold'"):
        segment_image(img, segment_settings(**SEG | {"method": "threshold"}))
