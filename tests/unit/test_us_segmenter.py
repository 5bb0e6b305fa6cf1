"""The learned head segmenter's pure parts: mask -> ellipse, folds, augmentation, a tiny U-Net,
and its training path: isolated fits that give the same weights beside others, alone or on Dask."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.common.ml.splits import groups_disjoint
from stages.ultrasound.head.hc18_training import exam_id, segmenter_folds
from stages.ultrasound.head.settings import AugmentSettings
from stages.ultrasound.head.training_data import augment, soft_ellipse_mask, target_ellipse
from stages.ultrasound.head.unet import ellipse_from_probability, to_input
from stages.ultrasound.imaging import Ellipse, ellipse_mask, ramanujan_perimeter

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "e",
    [
        Ellipse(400.0, 270.0, 250.0, 180.0, 0.4),
        Ellipse(330.0, 300.0, 120.0, 95.0, 2.2),  # a small head, tilted the other way
    ],
)
def test_ellipse_from_a_low_resolution_phantom_mask(e):
    # the soft mask the network is trained to reproduce: an 800 x 540 ellipse at 224 x 160
    shape = (540, 800)
    prob = soft_ellipse_mask(shape, (e.cx, e.cy, e.a, e.b, e.angle_rad), (160, 224))
    fit, score = ellipse_from_probability(prob, shape)
    assert fit is not None and score > 0.97
    assert (fit.cx, fit.cy) == pytest.approx((e.cx, e.cy), abs=1.5)
    # sub-pixel: the circumference is right to well under one low-resolution pixel (~3.6 px)
    hc, hc_fit = ramanujan_perimeter(e.a, e.b), ramanujan_perimeter(fit.a, fit.b)
    assert hc_fit == pytest.approx(hc, rel=0.005)
    assert math.cos(2 * (fit.angle_rad - e.angle_rad)) > math.cos(2 * 0.02)


def test_ellipse_from_a_mask_cut_by_the_image_border():
    # a head partly out of view: the border is not part of the outline
    shape = (540, 800)
    e = Ellipse(650.0, 300.0, 230.0, 170.0, 0.1)
    prob = soft_ellipse_mask(shape, (e.cx, e.cy, e.a, e.b, e.angle_rad), (160, 224))
    fit, score = ellipse_from_probability(prob, shape)
    assert fit is not None
    assert ramanujan_perimeter(fit.a, fit.b) == pytest.approx(
        ramanujan_perimeter(e.a, e.b), rel=0.01
    )


def test_the_head_wins_over_a_bigger_ragged_blob_and_a_fused_one():
    shape = (540, 800)
    head = Ellipse(250.0, 330.0, 150.0, 120.0, 0.3)
    mask = ellipse_mask(shape, head)
    rng = np.random.default_rng(0)
    blob = np.zeros(shape, bool)  # a ragged region apart from the head, larger than it
    for _ in range(40):
        blob |= ellipse_mask(shape, Ellipse(*rng.uniform([480, 60], [760, 480]), 60.0, 25.0, 1.0))
    for extra in (blob, ellipse_mask(shape, Ellipse(420.0, 200.0, 90.0, 40.0, 0.0))):
        fit, _ = ellipse_from_probability(mask_to_input(mask | extra), shape)
        assert fit is not None
        hc = ramanujan_perimeter(head.a, head.b)
        assert ramanujan_perimeter(fit.a, fit.b) == pytest.approx(hc, rel=0.05)
        assert np.hypot(fit.cx - head.cx, fit.cy - head.cy) < 15


def mask_to_input(mask: np.ndarray, input_hw: tuple[int, int] = (160, 224)) -> np.ndarray:
    """A boolean mask at the network's size as the share of each pixel inside it."""
    return to_input(np.where(mask, 255, 0).astype(np.uint8), input_hw)


def test_no_mask_no_ellipse():
    assert ellipse_from_probability(np.zeros((32, 48)), (540, 800))[0] is None
    assert ellipse_from_probability(np.full((32, 48), 0.9), (540, 800))[0] is None


def test_exam_id():
    assert exam_id("012_HC") == "012" == exam_id("012_2HC")
    assert exam_id("odd") == "odd"


def test_folds_are_examination_disjoint_deterministic_and_size_stratified():
    rng = np.random.default_rng(0)
    names = [f"{i:03d}_HC" for i in range(60)] + [f"{i:03d}_2HC" for i in range(0, 60, 3)]
    hc = rng.uniform(60, 330, len(names))
    folds = segmenter_folds(names, hc, 5, seed=7)
    assert list(folds["image"]) == names
    assert set(folds["fold"]) == set(range(5))
    assert groups_disjoint(folds["exam"], folds["fold"])
    assert folds.equals(segmenter_folds(names, hc, 5, seed=7))
    assert not folds["fold"].equals(segmenter_folds(names, hc, 5, seed=8)["fold"])
    # every fold holds small and big heads alike
    big = folds["hc_mm"] > np.median(hc)
    share = big.groupby(folds["fold"]).mean()
    assert share.between(0.2, 0.8).all()


def test_inputs_and_augmentation_keep_shapes_ranges_and_image_mask_alignment():
    shape = (270, 400)
    e = Ellipse(180.0, 140.0, 90.0, 70.0, 0.3)
    mask = ellipse_mask(shape, e)
    img = np.where(mask, 200, 30).astype(np.uint8)
    x, y = (
        to_input(img, (32, 48)),
        soft_ellipse_mask(shape, (e.cx, e.cy, e.a, e.b, e.angle_rad), (32, 48)),
    )
    assert x.shape == y.shape == (32, 48) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1 and 0 <= y.min() and y.max() <= 1
    aug = AugmentSettings(rotation_deg=20, scale=0.2, shift=0.1, flip=0.5, gamma=0.0,
                          contrast=0.0, brightness=0.0, noise=0.0)  # fmt: skip
    xs, ys = np.stack([x] * 4), np.stack([y] * 4)
    xa, ya = augment(xs, ys, np.random.default_rng(1), aug)
    xb, _ = augment(xs, ys, np.random.default_rng(1), aug)
    assert np.array_equal(xa, xb)  # seeded
    assert not np.allclose(xa[0], xa[1])
    # geometry moves image and mask together: the bright region is the masked region
    bright = xa > (30 + 200) / 2 / 255
    assert ((ya > 0.5) == bright).mean() > 0.95


def test_tiny_unet_shapes_and_logits():
    from stages.ultrasound.head.unet_network import build_unet, model_outputs, stack_models

    model = build_unet((32, 48), (4, 8, 8), True, "coarse")
    x = np.random.default_rng(0).random((3, 32, 48)).astype(np.float32)
    (logits,) = model_outputs(model, x)
    assert logits.shape == (3, 32, 48) and logits.dtype == np.float32
    other = build_unet((32, 48), (4, 8, 8), True, "coarse")
    both = model_outputs(stack_models([model, other]), x)  # one call, each member's output
    assert len(both) == 2 and np.allclose(both[0], logits, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        build_unet((30, 48), (4, 8, 8), True, "coarse")


def test_each_hc18_image_gets_the_model_that_never_saw_it():
    from pathlib import Path

    from stages.ultrasound.paths import segmenter_folder

    models = Path("m")
    folds = {"001_HC": 0, "002_HC": 3}
    assert segmenter_folder("hc18", "002_HC", folds, models) == models / "fold_3"
    assert segmenter_folder("hc18", "999_HC", folds, models) == models / "final"
    # a FETAL_PLANES_DB image never uses a fold model, whatever its name
    assert segmenter_folder("fetal_planes", "001_HC", folds, models) == models / "final"


def test_target_ellipse_has_the_reported_circumference():
    from tests.synth_us import outline_annotation

    e = Ellipse(300.0, 220.0, 150.0, 110.0, 0.5)
    outline = outline_annotation((450, 640), e)
    pixel_mm, hc_mm = 0.2, 0.2 * ramanujan_perimeter(e.a, e.b) * 0.99  # 1 % below the drawing
    t = target_ellipse(outline, hc_mm, pixel_mm)
    assert t is not None
    assert ramanujan_perimeter(t[2], t[3]) * pixel_mm == pytest.approx(hc_mm, rel=1e-9)
    assert tuple(t[:2]) == pytest.approx((e.cx, e.cy), abs=1.0)
    assert target_ellipse(np.zeros((450, 640), np.uint8), hc_mm, pixel_mm) is None


def test_folds_of_very_few_images():
    folds = segmenter_folds(["002_HC", "009_HC", "016_HC"], [70.0, 150.0, 300.0], 2, seed=0)
    assert set(folds["fold"]) == {0, 1}


def test_the_unet_method_without_a_trained_segmenter_is_an_error():
    from stages.ultrasound.head.segmenters import segment_image
    from tests.synth_us import CLASSICAL_BASIC, phantom_head, segment_settings

    img, _ = phantom_head((260, 380), axes=(110, 85), seed=0)
    with pytest.raises(ValueError, match="trained segmenter"):
        segment_image(img, segment_settings(**CLASSICAL_BASIC | {"method": "unet"}))


def test_hc18_summary_charges_a_missing_ellipse_its_whole_circumference():
    """Known answer: errors 1 and 3 mm plus one image without an ellipse (true HC 100 mm)."""
    from stages.ultrasound.head.hc18 import hc18_summary

    s = hc18_summary([0.9, 0.95, 0.0], [1.0, -3.0, np.nan], [150.0, 160.0, 100.0])
    assert s["hc_error_mm_mean"] == pytest.approx((1 + 3 + 100) / 3)
    assert s["hc_error_mm_median"] == pytest.approx(3.0)
    assert s["hc_error_mm_signed_mean"] == pytest.approx(-1.0)  # over the found ellipses
    assert s["dice_mean"] == pytest.approx(1.85 / 3) and s["n_no_ellipse"] == 1
    assert all(np.isfinite(v) for v in s.values())
