"""bench.plane_features' learning curve: training folds shrink by whole patients."""

from __future__ import annotations

import numpy as np
import pytest

from bench.plane_features import subsample_groups

pytestmark = pytest.mark.unit


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
