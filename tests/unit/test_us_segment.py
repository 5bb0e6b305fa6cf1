"""Skull ellipse segmentation on phantom heads whose ellipse and circumference are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.common.parallel import Result, map_images
from stages.ultrasound.imaging import Ellipse, dice, ellipse_mask, ramanujan_perimeter
from stages.ultrasound.segment import (
    Segmentation,
    brain_crop,
    conic_to_ellipse,
    fit_ellipse_points,
    segment_image,
    truth_mask,
)
from tests.synth_us import outline_annotation, phantom_head, phantom_non_brain

pytestmark = pytest.mark.unit

SEG = {"method": "classical", "work_width": 240, "crop_size": 64, "grid": 3, "n_hypotheses": 600}


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
    seg = segment_image(img, SEG)
    assert seg.ok, seg.reason
    hc_true = ramanujan_perimeter(true.a, true.b)
    assert seg.hc_px() == pytest.approx(hc_true, rel=0.03)
    assert dice(seg.cranium, ellipse_mask(img.shape, true)) > 0.95
    # the brain lies inside the cranium and is smaller by about the skull
    assert seg.brain.sum() < seg.cranium.sum() and not (seg.brain & ~seg.cranium).any()
    assert seg.skull_px == pytest.approx(0.06 * 110, rel=0.6)


def test_head_off_centre_and_partly_out_of_view():
    img, true = phantom_head((260, 380), center=(110, 120), axes=(120, 95), angle=0.2, seed=5)
    seg = segment_image(img, SEG)
    truth = ellipse_mask(img.shape, true)
    assert seg.ok and dice(seg.cranium, truth) > 0.93


def test_no_head_gives_ok_false_or_low_score_never_a_crash():
    flat = np.full((200, 300), 40, np.uint8)
    seg = segment_image(flat, SEG)
    assert isinstance(seg, Segmentation)
    assert not seg.ok
    crop = brain_crop(flat, seg, 32)
    assert crop.shape == (32, 32) and crop.dtype == np.uint8


def test_non_brain_image_runs():
    seg = segment_image(phantom_non_brain((200, 300), "Fetal femur", seed=1), SEG)
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
        seg = segment_image(img, SEG)
        errs.append(abs(seg.hc_px() / ramanujan_perimeter(true.a, true.b) - 1))
    assert max(errs) < 0.04, errs
    assert math.isfinite(sum(errs))
