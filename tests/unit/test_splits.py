"""Stratified folds: balanced, reproducible, group-disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.splits import groups_disjoint, stratified_folds

pytestmark = pytest.mark.unit


def _data(n: int = 200, pos_frac: float = 0.2, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pos_frac).astype(int)
    return [f"r{i}" for i in range(n)], labels


def test_folds_are_stratified_and_cover_every_item() -> None:
    ids, y = _data()
    folds = stratified_folds(ids, y, n_folds=5, seed=1)
    assert folds.shape == (len(ids),) and set(folds) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    pos = np.bincount(folds, weights=y)
    assert pos.max() - pos.min() <= 1  # each fold carries its share of positives


def test_same_seed_same_folds_other_seed_differs() -> None:
    ids, y = _data()
    a = stratified_folds(ids, y, 5, seed=42)
    assert np.array_equal(a, stratified_folds(ids, y, 5, seed=42))
    assert not np.array_equal(a, stratified_folds(ids, y, 5, seed=43))


def test_groups_never_straddle_folds() -> None:
    ids, y = _data(300)
    patients = np.array([f"p{i // 3}" for i in range(300)])  # 3 images per patient
    y = np.repeat(y[::3], 3)  # one label per patient
    folds = stratified_folds(ids, y, 4, seed=0, groups=patients)
    assert groups_disjoint(patients, folds)
    assert not groups_disjoint(patients, np.arange(300) % 4)
    assert set(folds) == set(range(4))


def test_bad_inputs_raise() -> None:
    ids, y = _data(20, pos_frac=0.1, seed=3)
    with pytest.raises(ValueError, match="fewer than"):
        stratified_folds(ids, np.r_[np.ones(2, int), np.zeros(18, int)], 5, 0)
    with pytest.raises(ValueError, match="equal length"):
        stratified_folds(ids, y[:-1], 5, 0)
    with pytest.raises(ValueError, match=">= 2"):
        stratified_folds(ids, y, 1, 0)
    with pytest.raises(ValueError, match="unique"):
        stratified_folds(["a"] * 20, y, 2, 0)
