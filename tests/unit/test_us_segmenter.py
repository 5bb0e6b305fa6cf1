"""The learned head segmenter's pure parts: mask -> ellipse, folds, augmentation, a tiny U-Net."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.common.ml.splits import groups_disjoint
from stages.ultrasound.head.unet import ellipse_from_probability
from stages.ultrasound.head.unet_training import augment
from stages.ultrasound.imaging import Ellipse, ellipse_mask, ramanujan_perimeter
from stages.ultrasound.pipeline.train_segmenter import (
    exam_id,
    mask_to_input,
    segmenter_folds,
    to_input,
)

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
    prob = mask_to_input(ellipse_mask(shape, e), (160, 224))
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
    prob = mask_to_input(ellipse_mask(shape, e), (160, 224))
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
        fit, _ = ellipse_from_probability(mask_to_input(mask | extra, (160, 224)), shape)
        assert fit is not None
        hc = ramanujan_perimeter(head.a, head.b)
        assert ramanujan_perimeter(fit.a, fit.b) == pytest.approx(hc, rel=0.05)
        assert np.hypot(fit.cx - head.cx, fit.cy - head.cy) < 15


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
    x, y = to_input(img, (32, 48)), mask_to_input(mask, (32, 48))
    assert x.shape == y.shape == (32, 48) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1 and 0 <= y.min() and y.max() <= 1
    aug = {"rotation_deg": 20, "scale": 0.2, "shift": 0.1, "flip": 0.5}
    xs, ys = np.stack([x] * 4), np.stack([y] * 4)
    xa, ya = augment(xs, ys, np.random.default_rng(1), aug)
    xb, _ = augment(xs, ys, np.random.default_rng(1), aug)
    assert np.array_equal(xa, xb)  # seeded
    assert not np.allclose(xa[0], xa[1])
    # geometry moves image and mask together: the bright region is the masked region
    bright = xa > (30 + 200) / 2 / 255
    assert ((ya > 0.5) == bright).mean() > 0.95


def test_tiny_unet_shapes_and_probabilities():
    from stages.ultrasound.head.unet_network import build_unet, predict_masks

    model = build_unet((32, 48), filters=(4, 8, 8))
    x = np.random.default_rng(0).random((3, 32, 48, 1)).astype(np.float32)
    prob = predict_masks(model, x)
    assert prob.shape == (3, 32, 48) and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1
    with pytest.raises(ValueError, match="divisible"):
        build_unet((30, 48), filters=(4, 8, 8))


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
    from stages.ultrasound.head.geometry import ellipse_from_outline
    from stages.ultrasound.pipeline.train_segmenter import target_mask
    from tests.synth_us import outline_annotation

    e = Ellipse(300.0, 220.0, 150.0, 110.0, 0.5)
    outline = outline_annotation((450, 640), e)
    pixel_mm, hc_mm = 0.2, 0.2 * ramanujan_perimeter(e.a, e.b) * 0.99  # 1 % below the drawing
    target = target_mask(outline, hc_mm, pixel_mm)
    fit = ellipse_from_outline(np.where(target ^ np.roll(target, 1, axis=0), 255, 0))
    assert fit is not None
    assert ramanujan_perimeter(fit.a, fit.b) * pixel_mm == pytest.approx(hc_mm, rel=0.004)
    assert (fit.cx, fit.cy) == pytest.approx((e.cx, e.cy), abs=1.0)


def test_folds_of_very_few_images():
    folds = segmenter_folds(["002_HC", "009_HC", "016_HC"], [70.0, 150.0, 300.0], 2, seed=0)
    assert set(folds["fold"]) == {0, 1}


def test_unet_method_falls_back_to_classical_below_the_score():
    from stages.ultrasound.head.segmenters import segment_image
    from tests.synth_us import CLASSICAL_BASIC, phantom_head, segment_settings

    class Blank:  # a network that marks nothing
        def probability(self, img: np.ndarray) -> np.ndarray:
            return np.zeros((32, 48), np.float32)

    img, _ = phantom_head((260, 380), axes=(110, 85), seed=0)
    p = CLASSICAL_BASIC | {"method": "unet", "unet_fallback_score": 0.0}
    assert not segment_image(img, segment_settings(**p), Blank()).ok
    assert segment_image(img, segment_settings(**p | {"unet_fallback_score": 0.5}), Blank()).ok
    with pytest.raises(ValueError, match="trained segmenter"):
        segment_image(img, segment_settings(**p))


def tiny_unet_data() -> tuple[np.ndarray, np.ndarray, dict]:
    """Six random 32 x 48 images and masks and a two-epoch U-Net setting (seconds to fit)."""
    rng = np.random.default_rng(0)
    x = rng.random((6, 32, 48)).astype(np.float32)
    y = (rng.random((6, 32, 48)) > 0.5).astype(np.float32)
    p = {
        "input_height": 32,
        "input_width": 48,
        "filters": [4, 8, 8],
        "epochs": 2,
        "batch_size": 4,
        "learning_rate": 0.002,
        "augment": {"rotation_deg": 15, "scale": 0.15, "flip": 0.5, "gamma": 0.3, "noise": 0.02},
    }
    return x, y, p


def test_training_is_seeded():
    from stages.ultrasound.head.unet_training import train_unet

    x, y, p = tiny_unet_data()

    def weights(seed: int) -> np.ndarray:
        model, result = train_unet(x, y, p, seed)
        assert len(result["loss"]) == len(result["epoch_times_s"]) == 2
        return np.concatenate([w.ravel() for w in model.get_weights()])

    first = weights(7)
    assert np.array_equal(first, weights(7))
    assert not np.allclose(first, weights(8))


def test_hc18_summary_charges_a_missing_ellipse_its_whole_circumference():
    """Known answer: errors 1 and 3 mm plus one image without an ellipse (true HC 100 mm)."""
    from stages.ultrasound.head.hc18 import hc18_summary

    s = hc18_summary([0.9, 0.95, 0.0], [1.0, -3.0, np.nan], [150.0, 160.0, 100.0])
    assert s["hc_error_mm_mean"] == pytest.approx((1 + 3 + 100) / 3)
    assert s["hc_error_mm_median"] == pytest.approx(3.0)
    assert s["hc_error_mm_signed_mean"] == pytest.approx(-1.0)  # over the found ellipses
    assert s["dice_mean"] == pytest.approx(1.85 / 3) and s["n_no_ellipse"] == 1
    assert all(np.isfinite(v) for v in s.values())


def test_a_model_trained_beside_another_equals_it_trained_alone(tmp_path):
    """How many U-Nets train at once never changes one: each gets its own process and thread."""
    from stages.ultrasound.head.unet_training import ModelJob, train_models
    from stages.ultrasound.model_dir import MODEL_FILE

    x, y, p = tiny_unet_data()

    def job(k: int, run: str) -> ModelJob:
        return ModelJob(f"m{k}", x[k:], y[k:], 7 + k, tmp_path / run / f"m{k}", {}, x[: k + 1])

    both = train_models([job(0, "both"), job(1, "both")], p, parallel=2)
    alone = train_models([job(1, "alone")], p, parallel=1)
    assert sorted(both) == ["m0", "m1"] and list(alone) == ["m1"]
    assert both["m1"].prob.shape == (2, 32, 48)
    assert np.array_equal(both["m1"].prob, alone["m1"].prob)
    assert both["m1"].result["loss"] == alone["m1"].result["loss"]
    saved = [(tmp_path / run / "m1" / MODEL_FILE).read_bytes() for run in ("both", "alone")]
    assert saved[0] == saved[1]
    assert not np.array_equal(both["m0"].prob[0], both["m1"].prob[0])  # other data and seed
