"""bench.hc_changes: the stage's figures per side and the images that moved (known answers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.hc_changes import compare

pytestmark = pytest.mark.unit


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
