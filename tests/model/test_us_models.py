"""Behaviour of the ultrasound models on tiny seeded synthetic heads (no real data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.common.ml import metrics
from stages.ultrasound.anomaly.autoencoder import anomaly_scores, reconstruction_mse
from stages.ultrasound.anomaly.corruptions import corruption_items
from stages.ultrasound.anomaly.training import AutoencoderSettings
from stages.ultrasound.crops import PLANES, plane_one_hot, to_unit_float
from stages.ultrasound.head import Segmentation
from stages.ultrasound.head.geometry import brain_crop
from stages.ultrasound.planes.classifier import predict_planes
from stages.ultrasound.planes.training import train_plane_classifier
from tests.synth_us import crop_settings, phantom_head, plane_settings

SIZE = 32


def _crops(n_per_plane: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Head crops (N, SIZE, SIZE) of phantom heads with each plane's feature, and labels."""
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for k, plane in enumerate(PLANES):
        for _ in range(n_per_plane):
            a = rng.uniform(50, 60)
            img, e = phantom_head(
                (150, 200),
                axes=(a, a * rng.uniform(0.75, 0.9)),
                angle=rng.uniform(0, np.pi),
                seed=int(rng.integers(1 << 31)),
                feature=plane,
                noise=0.15,
            )
            seg = Segmentation(True, e, img.shape, skull_px=0.06 * a)
            crops.append(brain_crop(img, seg, SIZE))
            labels.append(k)
    return np.stack(crops), np.array(labels)


@pytest.fixture(scope="module")
def heads() -> dict[str, np.ndarray]:
    x_tr, y_tr = _crops(12, seed=0)
    x_te, y_te = _crops(4, seed=1)
    return {"x_tr": x_tr, "y_tr": y_tr, "x_te": x_te, "y_te": y_te}


# A small Gabor bank for 32 px crops, the stage's read-out
TINY_PLANES = {
    "gabor": {"frequencies": [0.15, 0.3], "orientations": 4, "grids": [2, 4], "pyramid": True},
    "l2": 0.01,
    "learning_rate": 3e-3,
    "epochs": 150,
    "batch_size": 32,
    "n_augment": 1,
    "augment": {"flip": "horizontal", "brightness": 0.1},
    "tta": "none",
}


def _train_classifier(heads: dict, seed: int, epochs: int = 150):
    s = plane_settings(**TINY_PLANES | {"seed": seed, "epochs": epochs})
    x_tr, x_te = to_unit_float(heads["x_tr"], SIZE), to_unit_float(heads["x_te"], SIZE)
    return train_plane_classifier(x_tr, heads["y_tr"], x_te, heads["y_te"], s)


def _train_autoencoder(heads: dict, **overrides):
    from stages.ultrasound.anomaly.training import train_autoencoder

    values = {
        "seed": 0,
        "filters": [8, 16, 16],
        "epochs": 60,
        "batch_size": 8,
        "learning_rate": 3e-3,
        "target_false_alarm": 0.05,
        "threshold_folds": 0,
        "latent_shrinkage": 0.1,
    }
    s = AutoencoderSettings(**values | overrides)
    x_tr, x_te = to_unit_float(heads["x_tr"], SIZE), to_unit_float(heads["x_te"], SIZE)
    p_tr = plane_one_hot([PLANES[i] for i in heads["y_tr"]])
    p_te = plane_one_hot([PLANES[i] for i in heads["y_te"]])
    model, res = train_autoencoder(x_tr, p_tr, x_te, p_te, s)
    return model, res, s


@pytest.mark.model
def test_autoencoder_flags_noise_blank_and_inverted_heads(heads) -> None:
    model, res, s = _train_autoencoder(heads)
    x_te = to_unit_float(heads["x_te"], SIZE)
    p_te = plane_one_hot([PLANES[i] for i in heads["y_te"]])
    normal = anomaly_scores(model, x_te, res["latent"])
    rng = np.random.default_rng(2)
    noise = rng.random(x_te.shape).astype(np.float32)
    blank = np.full_like(x_te, 0.5)
    inverted = 1.0 - x_te
    for name, bad in {"noise": noise, "blank": blank, "inverted": inverted}.items():
        score = anomaly_scores(model, bad, res["latent"])
        assert np.median(score) > np.percentile(normal, 90), name
        assert np.mean(score > res["threshold"]) >= 0.9, name
    # plain MSE: noise and inverted heads are reconstructed worse than heads
    normal_mse = reconstruction_mse(model, x_te, p_te)
    for bad in (noise, inverted):
        assert np.median(reconstruction_mse(model, bad, p_te)) > 2 * np.median(normal_mse)
    assert res["threshold_method"] == "oof_conformal"
    assert res["threshold_n"] == len(heads["x_tr"]) + len(heads["x_te"])
    assert len(res["epoch_times_s"]) == s.epochs
    # The per-item evaluation the registry pairs on: held-out heads against their corrupted
    # copies (noise, blank, inverted are easy; a 30 % occlusion is not).
    rows = pd.DataFrame({"image": [f"h{i}" for i in range(len(x_te))], "patient": "p"})

    def score(crops_u8: np.ndarray) -> np.ndarray:
        return anomaly_scores(model, to_unit_float(crops_u8, SIZE), res["latent"])

    items = corruption_items(score, rows, heads["x_te"], s.seed, crop_settings())
    assert 0.8 <= metrics.auc(items["y"].to_numpy(), items["pred"].to_numpy()) <= 1.0


@pytest.mark.model
def test_classifier_is_deterministic_with_seed(heads) -> None:
    x = to_unit_float(heads["x_te"], SIZE)
    p1 = predict_planes(_train_classifier(heads, 3, epochs=4)[0], x, "none")
    p2 = predict_planes(_train_classifier(heads, 3, epochs=4)[0], x, "none")
    p3 = predict_planes(_train_classifier(heads, 4, epochs=4)[0], x, "none")
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    assert not np.allclose(p1, p3, atol=1e-6)


@pytest.mark.model
def test_gabor_classifier_learns_planes_and_ignores_small_changes(heads) -> None:
    """The pipeline's front-end, trained by the stage's own function: a small gain or
    brightness change does not flip a prediction."""
    model, res = _train_classifier(heads, 0)
    assert res["val_accuracy"] >= 0.75 and res["best_epoch"] == res["epochs_run"] == 150
    x_te = to_unit_float(heads["x_te"], SIZE)
    base = predict_planes(model, x_te, "none").argmax(1)
    for gain in (0.95, 1.05):
        moved = predict_planes(model, np.clip(x_te * gain, 0, 1), "none").argmax(1)
        assert np.mean(moved == base) >= 0.9, gain
    for delta in (-0.04, 0.04):
        moved = predict_planes(model, np.clip(x_te + delta, 0, 1), "none").argmax(1)
        assert np.mean(moved == base) >= 0.9, delta
