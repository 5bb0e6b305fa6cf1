"""Unit tests of the ultrasound plane split, model builders and evaluation helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.common.ml.training import class_weights
from stages.ultrasound.anomaly.autoencoder import (
    anomaly_scores,
    build_autoencoder,
    fit_gaussian,
    fit_latent_ring,
    latent_codes,
    mahalanobis,
)
from stages.ultrasound.crops import PLANES, crops_for, plane_one_hot, to_unit_float
from stages.ultrasound.pipeline.split_planes import (
    assert_patient_disjoint,
    build_manifest,
    image_stem,
    split_balance,
)
from stages.ultrasound.planes.classifier import (
    build_plane_classifier,
    plane_items,
    plane_scores,
    predict_planes,
)
from tests.synth_us import crop_settings, plane_settings


def _labels(seed: int = 0, n_patients: int = 40) -> pd.DataFrame:
    """A FETAL_PLANES_DB-like label table: patients with 1-4 images, both Train values."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(1, n_patients + 1):
        train = int(rng.random() < 0.5)
        for k in range(int(rng.integers(1, 5))):
            brain = rng.random() < 0.85
            plane = "Fetal brain" if brain else "Fetal femur"
            bp = str(rng.choice(PLANES)) if brain else "Not A Brain"
            rows.append((f"Patient{p:05d}_Plane3_{k + 1}_of_4", p, plane, bp, train))
    return pd.DataFrame(
        rows, columns=["Image_name", "Patient_num", "Plane", "Brain_plane", "Train"]
    )


@pytest.mark.unit
def test_manifest_is_patient_disjoint_and_test_is_train0() -> None:
    labels = _labels()
    usable = set(labels["Image_name"])
    man = build_manifest(labels, usable, dict.fromkeys(usable, True), 0.25, salt="s1")
    assert len(man) == len(labels)
    sides = man.groupby("patient")["split"].nunique()
    assert sides.max() == 1
    merged = man.merge(labels.assign(image=labels["Image_name"]), on="image")
    assert (merged["split"].eq("test") == merged["Train"].eq(0)).all()
    assert set(man["split"]) == {"train", "val", "test"}
    # val holds about val_fraction of the Train==1 patients
    pool = man[man["split"] != "test"].groupby("patient")["split"].first()
    assert 0.1 <= (pool == "val").mean() <= 0.4
    assert man.loc[man["plane"].eq("Fetal femur"), "is_brain"].eq(False).all()


@pytest.mark.unit
def test_manifest_keeps_only_usable_and_segmented_brain_images() -> None:
    labels = _labels(seed=3)
    names = list(labels["Image_name"])
    usable = set(names[::2])  # the others failed validation
    seg_ok = {n: i % 3 != 0 for i, n in enumerate(names)}
    man = build_manifest(labels, usable, seg_ok, 0.2, salt="s")
    assert set(man["image"]) <= usable
    brain = man[man["is_brain"]]
    assert brain["image"].map(seg_ok).all()
    # non-brain images stay even when no skull was found (the anomaly evaluation uses them)
    non_brain = labels[(labels["Plane"] != "Fetal brain") & labels["Image_name"].isin(usable)]
    assert set(non_brain["Image_name"]) <= set(man["image"])


@pytest.mark.unit
def test_patient_sides_stay_put_when_patients_arrive() -> None:
    labels = _labels(seed=3, n_patients=60)
    names = set(labels["Image_name"])
    ok = dict.fromkeys(names, True)
    first = labels[labels["Patient_num"] <= 40]
    before = build_manifest(first, set(first["Image_name"]), ok, 0.3, salt="s")
    after = build_manifest(labels, names, ok, 0.3, salt="s")
    side = dict(zip(after["image"], after["split"], strict=True))
    assert all(side[i] == s for i, s in zip(before["image"], before["split"], strict=True))
    assert set(after["split"]) == {"train", "val", "test"}
    other_salt = build_manifest(labels, names, ok, 0.3, salt="t")
    assert not other_salt["split"].equals(after["split"])
    balance = split_balance(after, PLANES)
    assert set(balance["split"]) == {"train", "val", "test"}
    shares = balance.groupby("split")["share_of_split"].sum()
    assert np.allclose(shares, 1.0)


@pytest.mark.data
def test_leaked_patient_fails() -> None:
    ok = pd.DataFrame({"patient": ["A", "A", "B"], "split": ["train", "train", "test"]})
    assert_patient_disjoint(ok)
    leaked = pd.DataFrame({"patient": ["A", "A", "B"], "split": ["train", "test", "test"]})
    with pytest.raises(ValueError, match="A"):
        assert_patient_disjoint(leaked)


@pytest.mark.data
def test_label_table_with_patient_in_both_train_values_fails() -> None:
    labels = pd.DataFrame(
        [
            ("P1_a", 1, "Fetal brain", "Trans-thalamic", 1),
            ("P1_b", 1, "Fetal brain", "Trans-cerebellum", 0),
            ("P2_a", 2, "Fetal brain", "Trans-thalamic", 1),
        ],
        columns=["Image_name", "Patient_num", "Plane", "Brain_plane", "Train"],
    )
    usable = set(labels["Image_name"])
    with pytest.raises(ValueError, match="both"):
        build_manifest(labels, usable, dict.fromkeys(usable, True), 0.2, "s")


@pytest.mark.unit
def test_image_stem_and_crop_lookup() -> None:
    assert image_stem("a/b/Patient1_x.png") == "Patient1_x"
    assert image_stem("Patient1_x") == "Patient1_x"
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    man = pd.DataFrame({"image": ["c", "a"]})
    out = crops_for(man, np.array(["a.png", "b.png", "c.png"]), images)
    assert np.array_equal(out, images[[2, 0]])
    with pytest.raises(KeyError):
        crops_for(pd.DataFrame({"image": ["zz"]}), np.array(["a"]), images[:1])


@pytest.mark.unit
def test_unit_float_and_one_hot() -> None:
    x = to_unit_float(np.full((2, 20, 20), 255, np.uint8), 16)
    assert x.shape == (2, 16, 16, 1) and x.dtype == np.float32
    assert np.allclose(x, 1.0)
    oh = plane_one_hot(["Trans-cerebellum", "Trans-thalamic"])
    assert oh.tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(KeyError):
        plane_one_hot(["Fetal femur"])
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[0] < w[1] and w[2] == 1.0  # an absent class keeps the neutral weight


@pytest.mark.unit
def test_autoencoder_shapes() -> None:
    model = build_autoencoder(32, (4, 8, 8))
    x = np.random.default_rng(0).random((2, 32, 32, 1)).astype(np.float32)
    out = np.asarray(model({"image": x, "plane": plane_one_hot(PLANES[:2])}))
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    assert [layer.filters for layer in model.layers if type(layer).__name__ == "Conv2D"] == [
        4,
        8,
        8,
        8,
        8,
        4,
        1,
    ]
    with pytest.raises(ValueError):
        build_autoencoder(36, (4, 8, 8))


@pytest.mark.unit
def test_mahalanobis_known_answers() -> None:
    mean, precision = np.zeros(2), np.diag([1.0, 0.25])  # variances 1 and 4
    d = mahalanobis(np.array([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]]), mean, precision)
    np.testing.assert_allclose(d, [3.0, 2.0, 0.0], atol=1e-6)


@pytest.mark.unit
def test_fit_gaussian_shrinks_towards_scaled_identity() -> None:
    codes = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    # sample covariance diag(2/3, 6); trace / D = 10/3
    mean, precision = fit_gaussian(codes, 0.0)
    np.testing.assert_allclose(mean, [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(np.linalg.inv(precision), np.diag([2 / 3, 6.0]), atol=1e-9)
    _, full = fit_gaussian(codes, 1.0)
    np.testing.assert_allclose(np.linalg.inv(full), np.eye(2) * 10 / 3, atol=1e-9)
    # more codes than dimensions is not needed: shrinkage keeps a singular sample invertible
    _, p1 = fit_gaussian(np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]), 0.1)
    assert np.all(np.isfinite(p1))


@pytest.mark.unit
def test_latent_score_flags_codes_far_from_training() -> None:
    model = build_autoencoder(32, (4, 8, 8))
    rng = np.random.default_rng(0)
    heads = (0.4 + 0.05 * rng.standard_normal((20, 32, 32, 1))).clip(0, 1).astype(np.float32)
    codes = latent_codes(model, heads)
    assert codes.shape == (20, 16)  # mean and std of 8 bottleneck channels
    mean, precision = fit_gaussian(codes, 0.1)
    normal = mahalanobis(codes, mean, precision)
    odd = mahalanobis(latent_codes(model, 1.0 - heads), mean, precision)
    assert np.median(odd) > 2 * np.median(normal)
    # the score: that distance and the ring's shortfall, in SDs of the training crops
    latent = fit_latent_ring(codes, heads, 0.1)
    scores = anomaly_scores(model, heads, latent)
    assert abs(float(np.mean(scores))) < 1.0  # the training crops themselves: about 0
    assert np.median(anomaly_scores(model, 1.0 - heads, latent)) > np.median(scores) + 2
    assert anomaly_scores(model, heads[:0], latent).shape == (0,)


@pytest.mark.unit
def test_plane_classifier_shapes() -> None:
    model = build_plane_classifier(32, plane_settings(dropout=0.3))
    x = np.random.default_rng(0).random((5, 32, 32, 1)).astype(np.float32)
    prob = predict_planes(model, x, tta="all")
    assert prob.shape == (5, 3)
    assert np.allclose(prob.sum(axis=1), 1.0, atol=1e-5)
    # dropout is off at inference: the same input gives the same output
    assert np.allclose(prob, predict_planes(model, x, tta="all"))
    with pytest.raises(ValueError, match="unknown tta"):
        predict_planes(model, x, tta="sideways")
    with pytest.raises(ValueError, match="not divisible"):
        build_plane_classifier(30, plane_settings())


@pytest.mark.unit
def test_corruptions_keep_shape_and_change_images() -> None:
    from stages.ultrasound.anomaly.corruptions import CORRUPTIONS
    from stages.ultrasound.pipeline.evaluate import anomaly_auc

    rng = np.random.default_rng(0)
    x = rng.integers(40, 200, size=(4, 32, 32), dtype=np.uint8)
    p = crop_settings(occlusion_frac=0.3, noise_std=0.2)
    for kind, fn in CORRUPTIONS.items():
        y = fn(x, np.random.default_rng(1), p)
        assert y.shape == x.shape and y.dtype == np.uint8, kind
        assert not np.array_equal(y, x), kind
    res = anomaly_auc(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6]), 50, 0)
    assert res["auroc"] == 1.0
    assert anomaly_auc(np.array([0.5, 0.6]), np.array([0.1, 0.2]), 50, 0)["auroc"] == 0.0


@pytest.mark.unit
def test_plane_scores_known_answers() -> None:
    prob = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]])
    s = plane_scores(prob, np.array([0, 1, 2]))
    assert s["val_accuracy"] == pytest.approx(2 / 3)
    # promotion metric: minus the mean cross-entropy, higher is better
    assert s["val_log_loss_neg"] == pytest.approx((np.log(0.7) + np.log(0.3) + np.log(0.8)) / 3)
    assert plane_scores(prob, np.array([1, 1, 2]))["val_log_loss_neg"] < s["val_log_loss_neg"]
    empty = plane_scores(np.zeros((0, 3)), np.array([], dtype=int))
    assert np.isnan(empty["val_accuracy"]) and np.isnan(empty["val_log_loss_neg"])


@pytest.mark.unit
def test_corruption_items_pair_every_crop_with_its_corrupted_copies() -> None:
    """Known layout: the clean crops first (y 0), then each corruption's (y 1, ``image|kind``);
    the same seed gives the same copies, so two versions are scored on the same items."""
    from stages.ultrasound.anomaly.corruptions import CORRUPTIONS, corruption_items

    rows = pd.DataFrame({"image": ["a", "b"], "patient": ["P1", "P2"]})
    crops = np.random.default_rng(0).integers(40, 200, size=(2, 16, 16), dtype=np.uint8)

    def mean_grey(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).mean(axis=1)

    items = corruption_items(mean_grey, rows, crops, 7, crop_settings())
    assert list(items.columns) == ["item", "cluster", "y", "pred"]
    assert list(items["item"][:4]) == ["a", "b", "a|occlusion", "b|occlusion"]
    assert len(items) == 2 * (1 + len(CORRUPTIONS)) and items["y"].sum() == 2 * len(CORRUPTIONS)
    assert list(items["cluster"]) == ["P1", "P2"] * (1 + len(CORRUPTIONS))
    np.testing.assert_allclose(items["pred"][:2], mean_grey(crops))
    again = corruption_items(mean_grey, rows, crops, 7, crop_settings())
    pd.testing.assert_frame_equal(items, again)
    other = corruption_items(mean_grey, rows, crops, 8, crop_settings())
    assert not np.array_equal(items["pred"], other["pred"])  # the seed draws the corruptions


@pytest.mark.unit
def test_plane_items_are_the_promotion_items_format() -> None:
    rows = pd.DataFrame({"image": ["a", "b"], "patient": [3, 4]})
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    items = plane_items(rows, np.array([0, 2]), prob)
    assert list(items.columns) == ["item", "cluster", "y", "pred.0", "pred.1", "pred.2"]
    assert list(items["cluster"]) == ["3", "4"] and list(items["y"]) == [0, 2]
    np.testing.assert_allclose(items[["pred.0", "pred.1", "pred.2"]].to_numpy(), prob)
