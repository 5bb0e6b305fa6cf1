"""Stratified folds: balanced, reproducible, group-disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from stages.common.ml.splits import (
    fold_balance,
    groups_disjoint,
    hashed_folds,
    hashed_sides,
    hashed_unit,
    single_class_folds,
    stratified_folds,
)

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


# --------------------------------------------------------------------------- stable under growth


def test_hashed_folds_never_move_an_item_when_others_arrive() -> None:
    ids = [f"r{i}" for i in range(300)]
    before = dict(zip(ids, hashed_folds(ids, 5, "s1"), strict=True))
    grown = ids[:120] + [f"new{i}" for i in range(50)] + ids[120:]  # arrivals anywhere
    after = dict(zip(grown, hashed_folds(grown, 5, "s1"), strict=True))
    assert all(after[i] == before[i] for i in ids)
    assert set(before.values()) == set(range(5))
    # the salt is the only other input: another salt moves items
    assert list(hashed_folds(ids, 5, "s2")) != list(before.values())


def test_hashed_unit_is_a_fixed_uniform_number() -> None:
    # known answer: the first 8 bytes of sha256(b"salt:key") as a fraction of 2**64
    import hashlib

    digest = hashlib.sha256(b"salt:key").digest()
    assert hashed_unit("key", "salt") == int.from_bytes(digest[:8], "big") / 2.0**64
    u = np.array([hashed_unit(str(i), "x") for i in range(4000)])
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02


def test_hashed_sides_stable_and_near_the_fraction() -> None:
    keys = [f"Patient{i:05d}" for i in range(1000)]
    sides = hashed_sides(keys, 0.2, "us")
    assert 0.16 < sum(s == "val" for s in sides.values()) / len(keys) < 0.24
    assert hashed_sides(keys[:10], 0.2, "us") == {k: sides[k] for k in keys[:10]}
    with pytest.raises(ValueError):
        hashed_sides(keys, 1.0, "us")


def test_fold_balance_table_and_the_one_class_guard() -> None:
    table = fold_balance([1, 0, 0, 0, 1, 1], [0, 0, 1, 1, 2, 2])
    assert table["n"].tolist() == [2, 2, 2]
    assert table["positives"].tolist() == [1, 0, 2]
    assert table["rate_minus_overall"].round(3).tolist() == [0.0, -0.5, 0.5]
    assert single_class_folds(table, 3) == [1, 2]
    with pytest.raises(ValueError, match=r"\[3\] are empty"):
        single_class_folds(table, 4)
