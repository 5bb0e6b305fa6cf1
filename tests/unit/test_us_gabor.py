"""The plane classifier's fixed Gabor front-end, the upright crop and the skull-ring score."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages.ultrasound.anomaly.autoencoder import (
    anomaly_scores,
    build_autoencoder,
    fit_latent_ring,
    latent_codes,
    latent_ring_parts,
    ring_contrast,
)
from stages.ultrasound.crops import to_unit_float
from stages.ultrasound.head import Segmentation
from stages.ultrasound.head.geometry import brain_crop, upright_angle
from stages.ultrasound.imaging import Ellipse
from stages.ultrasound.model_dir import load_model_dir, save_model_dir
from stages.ultrasound.planes.classifier import build_plane_classifier, predict_planes
from tests.synth_us import phantom_head, phantom_non_brain, plane_settings

pytestmark = pytest.mark.unit


def _stripes(size: int, angle_rad: float, period_px: float) -> np.ndarray:
    """A (1, size, size, 1) grating whose crests run perpendicular to ``angle_rad``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = xx * math.cos(angle_rad) + yy * math.sin(angle_rad)
    return (0.5 + 0.4 * np.cos(2 * math.pi * u / period_px))[None, ..., None].astype(np.float32)


def test_pyramid_step_and_feature_count() -> None:
    from stages.ultrasound.planes.gabor import feature_count, pyramid_step

    assert [pyramid_step(f) for f in (0.3, 0.2, 0.11, 0.1, 0.05, 0.04)] == [1, 1, 1, 2, 4, 4]
    assert feature_count([0.1, 0.2, 0.3], 6, [4, 8]) == 3 * 6 * (16 + 64)


@pytest.mark.parametrize("pyramid", [False, True])
def test_gabor_energy_peaks_at_the_grating_orientation_and_frequency(pyramid: bool) -> None:
    """A grating of frequency 0.1 cycles/px at 60 deg excites the (0.1, 60 deg) channel most."""
    from stages.ultrasound.planes.gabor import GaborGrid

    layer = GaborGrid([0.1, 0.3], 6, [1], pyramid=pyramid)
    feats = np.asarray(layer(_stripes(64, math.radians(60), 10.0)))[0]
    assert feats.shape == (2 * 6,) and np.all(np.isfinite(feats)) and np.all(feats >= 0)
    per_freq = feats.reshape(2, 6)  # (frequency, orientation) with grid 1x1
    assert np.argmax(per_freq[0]) == 2  # orientations 0, 30, 60, ... deg
    assert per_freq[0].max() > 2 * per_freq[1].max()  # the 0.3 channels barely respond
    assert not layer.trainable_weights


def test_gabor_classifier_survives_save_and_load(tmp_path) -> None:
    gabor = {"frequencies": [0.2], "orientations": 4, "grids": [2, 4], "pyramid": True}
    model = build_plane_classifier(32, plane_settings(gabor=gabor, l2=0.01))
    x = np.random.default_rng(0).random((4, 32, 32, 1)).astype(np.float32)
    before = predict_planes(model, x, "horizontal")
    save_model_dir(model, tmp_path, {"input_size": 32})
    loaded, config = load_model_dir(tmp_path)
    np.testing.assert_allclose(predict_planes(loaded, x, "horizontal"), before, atol=1e-6)
    assert config["input_size"] == 32
    with pytest.raises(ValueError, match="divisible"):
        build_plane_classifier(30, plane_settings(gabor={"grids": [4]}))
    with pytest.raises(ValueError, match="tta"):
        predict_planes(model, x, "sideways")


def test_upright_angle_keeps_the_top_on_top() -> None:
    assert upright_angle(0.1) == pytest.approx(0.1)
    assert upright_angle(math.pi - 0.1) == pytest.approx(-0.1)
    assert -math.pi / 2 <= upright_angle(math.pi / 2) < math.pi / 2
    # One head, its axis written as angle and angle + pi: the crops agree, the near field
    # (a bright band at the image's top) stays at the crop's top.
    img, e = phantom_head((200, 300), axes=(70, 55), angle=0.05, noise=0.0, seed=3)
    img[:40] = 250
    flipped = Ellipse(e.cx, e.cy, e.a, e.b, e.angle_rad + math.pi)
    a = brain_crop(img, Segmentation(True, e, img.shape), 64).astype(int)
    b = brain_crop(img, Segmentation(True, flipped, img.shape), 64).astype(int)
    assert np.abs(a - b).mean() < 1
    assert a[:4].mean() > a[-4:].mean() + 50


def test_ring_contrast_separates_heads_from_other_frames() -> None:
    heads, others = [], []
    for seed in range(4):
        img, e = phantom_head((200, 300), axes=(80, 64), angle=0.3 * seed, noise=0.1, seed=seed)
        heads.append(brain_crop(img, Segmentation(True, e, img.shape), 64))
        other = phantom_non_brain((200, 300), "Fetal femur", seed=seed)
        # a segmentation that fitted an ellipse to whatever edges the frame has
        guess = Ellipse(150.0, 100.0, 80.0, 64.0, 0.3 * seed)
        others.append(brain_crop(other, Segmentation(True, guess, other.shape), 64))
    ring_heads = ring_contrast(to_unit_float(np.stack(heads), 64))
    ring_others = ring_contrast(to_unit_float(np.stack(others), 64))
    assert ring_heads.min() > 0.15
    assert ring_heads.min() > ring_others.max()
    flat = np.full((2, 64, 64, 1), 0.4, np.float32)
    np.testing.assert_allclose(ring_contrast(flat), 0.0, atol=1e-6)
    assert ring_contrast(flat[:0]).shape == (0,)


def test_latent_ring_score_flags_a_crop_without_a_skull_ring() -> None:
    model = build_autoencoder(32, (4, 8, 8))
    crops = []
    for seed in range(12):
        img, e = phantom_head((160, 220), axes=(60, 48), angle=0.2 * seed, noise=0.1, seed=seed)
        crops.append(brain_crop(img, Segmentation(True, e, img.shape), 32))
    x = to_unit_float(np.stack(crops), 32)
    latent = fit_latent_ring(latent_codes(model, x), x, 0.1)
    assert {"dist_mean", "dist_std", "ring_mean", "ring_std"} <= set(latent)
    normal = anomaly_scores(model, x, latent)
    no_ring = x.copy()
    no_ring[:, :3], no_ring[:, -3:], no_ring[:, :, :3], no_ring[:, :, -3:] = 0.8, 0.8, 0.8, 0.8
    no_ring[:, 3:-3, 3:-3] = 0.8 * x[:, 3:-3, 3:-3].mean()
    odd = anomaly_scores(model, no_ring, latent)
    assert np.median(odd) > np.percentile(normal, 95)
    # the score is the sum of its parts in training standard deviations (ring one-sided)
    dist, ring = latent_ring_parts(model, no_ring, latent)
    z = (dist - latent["dist_mean"]) / latent["dist_std"]
    z += np.maximum(0.0, (latent["ring_mean"] - ring) / latent["ring_std"])
    np.testing.assert_allclose(odd, z, rtol=1e-5, atol=1e-5)
