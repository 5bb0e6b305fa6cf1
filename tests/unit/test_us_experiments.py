"""The ultrasound experiments' pure parts (known answers): ``experiments.ultrasound.*``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.ultrasound.hc_changes import compare
from experiments.ultrasound.plane_features import subsample_groups
from tests.synth_us import phantom_head

pytestmark = pytest.mark.unit


# --------------------------------------------------------------------------- hc_changes: the
# stage's figures per side and the images that moved


def table(errors: list[float], dice: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": ["a", "b", "c", "d"],
            "fold": [0, 0, 1, 1],
            "dice": dice,
            "hc_mm": 0.0,
            "hc_error_mm": errors,
            "hc_true_mm": [100.0, 150.0, 200.0, 60.0],
        }
    )


def test_a_lost_ellipse_is_charged_its_whole_circumference_and_listed_first():
    before = table([1.0, -3.0, 2.0, 8.0], [0.9, 0.9, 0.9, 0.8])
    after = table([1.0, -4.0, 12.0, np.nan], [0.9, 0.9, 0.8, 0.0])
    r = compare(before, after, top=2)
    b, a = r["sides"]["before"], r["sides"]["after"]
    assert b["hc_error_mm_mean"] == pytest.approx(14 / 4)
    assert a["hc_error_mm_mean"] == pytest.approx((1 + 4 + 12 + 60) / 4)  # d: its 60 mm
    assert a["hc_error_mm_median"] == pytest.approx(8.0)  # of 1, 4, 12, 60 (as the stage counts)
    assert (b["n_no_ellipse"], a["n_no_ellipse"]) == (0, 1)
    assert a["dice_mean"] == pytest.approx(2.6 / 4)
    assert r["n_both_found"] == 3
    assert b["hc_error_mm_mean_both_found"] == pytest.approx(6 / 3)
    assert a["hc_error_mm_mean_both_found"] == pytest.approx(17 / 3)
    assert [m["image"] for m in r["moved"]] == ["d", "c"]
    assert r["moved"][0]["change"] == pytest.approx(52.0)
    assert r["moved"][1]["change"] == pytest.approx(10.0)


# --------------------------------------------------------------------------- plane_features: the
# learning curve's training folds shrink by whole patients


def test_subsample_keeps_whole_patients_in_the_asked_fraction() -> None:
    groups = np.repeat([f"p{i}" for i in range(20)], 3)  # 20 patients x 3 images
    index = np.arange(len(groups))[::-1]  # order must be kept, whatever it is
    kept = subsample_groups(index, groups, 0.25, np.random.default_rng(0))
    patients = set(groups[kept])
    assert len(patients) == 5
    assert len(kept) == 15  # every image of a kept patient, none of the others
    assert list(kept) == [i for i in index if groups[i] in patients]


def test_subsample_full_fraction_is_identity_and_differs_by_seed() -> None:
    groups = np.repeat(np.arange(30), 2)
    index = np.arange(60)
    assert subsample_groups(index, groups, 1.0, np.random.default_rng(0)) is index
    a = subsample_groups(index, groups, 0.5, np.random.default_rng(1))
    b = subsample_groups(index, groups, 0.5, np.random.default_rng(2))
    assert len(a) == len(b) == 30 and not np.array_equal(a, b)


def test_subsample_keeps_at_least_one_patient_and_rejects_bad_fractions() -> None:
    groups = np.array(["a", "a", "b", "c"])
    kept = subsample_groups(np.arange(4), groups, 0.01, np.random.default_rng(0))
    assert len(set(groups[kept])) == 1
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            subsample_groups(np.arange(4), groups, bad, np.random.default_rng(0))


# --------------------------------------------------------------------------- segmentation: the
# original study's threshold method, a research variant


def test_threshold_method_finds_a_bright_skull_and_says_why_it_finds_none() -> None:
    from experiments.ultrasound.segmentation import threshold_segmentation

    img, e = phantom_head((200, 300), axes=(80, 60), noise=0.05, skull_intensity=230, seed=0)
    seg = threshold_segmentation(img, 180)
    assert seg.ok and seg.hc_px() > 0
    assert (seg.ellipse.cx, seg.ellipse.cy) == pytest.approx((e.cx, e.cy), abs=10)
    flat = threshold_segmentation(np.full((100, 120), 40, np.uint8), 180)
    assert not flat.ok and flat.reason == "no contour above threshold"


# --------------------------------------------------------------------------- anomaly_scores: the
# reconstruction scores the pipeline no longer offers


def test_normalised_mse_is_scale_free_and_finite_on_a_flat_frame() -> None:
    from experiments.ultrasound.anomaly_scores import normalised_mse

    rng = np.random.default_rng(0)
    x = rng.random((2, 8, 8, 1)).astype(np.float32)
    err = x + 0.1
    base = normalised_mse(x, err)
    # the same error on an image of twice the contrast counts a quarter as much
    np.testing.assert_allclose(normalised_mse(2 * x, 2 * x + 0.1), base / 4, rtol=0.02)
    flat = np.full((1, 8, 8, 1), 0.5, np.float32)
    assert np.isfinite(normalised_mse(flat, flat + 0.1)).all()
