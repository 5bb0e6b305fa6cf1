"""experiments.split_stability counts kept, moved and new assignments (known answers)."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.split_stability import compare

pytestmark = pytest.mark.unit


def test_counts_kept_moved_and_new_records() -> None:
    before = pd.DataFrame({"record": ["a", "b", "c"], "label": 0, "fold": [0, 1, 2]})
    after = pd.DataFrame({"record": ["a", "b", "c", "d", "e"], "label": 0, "fold": [0, 2, 2, 1, 1]})
    r = compare(before, after)
    assert (r["before"], r["after"], r["kept"], r["moved"]) == (3, 5, 2, 1)
    assert r["new"] == {"1": 2}


def test_a_patients_side_is_read_once_per_patient() -> None:
    before = pd.DataFrame(
        {
            "image": ["x1", "x2", "y1"],
            "patient": ["p", "p", "q"],
            "split": ["train", "train", "val"],
        }
    )
    after = pd.concat(
        [before, pd.DataFrame({"image": ["z1"], "patient": ["r"], "split": ["test"]})]
    )
    r = compare(before, after)
    assert (r["before"], r["kept"], r["moved"], r["new"]) == (2, 2, 0, {"test": 1})
