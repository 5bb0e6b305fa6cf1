"""Reproducible splits: stratified K folds, and salted-hash assignments stable under growth.

Both modalities use it: CTG folds are record-level (one record per delivery), ultrasound splits
keep every image of a patient on one side (``groups``).

The pipeline's manifests use the hashed assignments (:func:`hashed_folds`, :func:`hashed_sides`):
an item's fold (or a patient's side) is a pure function of its id and a salt, so items already
assigned never move when new ones arrive, and a champion and a challenger trained before and after
an arrival can be compared on the records neither trained on. Class balance is then kept by the
law of large numbers rather than forced; :func:`fold_balance` reports it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold


def stratified_folds(
    ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    n_folds: int,
    seed: int,
    groups: Sequence[str] | np.ndarray | None = None,
) -> np.ndarray:
    """Fold number (0..n_folds-1) of each item, label-stratified, shuffled by ``seed``.

    Parameters
    ----------
    ids
        Item ids (only their count and order matter; returned folds align with them).
    labels
        Class label per item; each fold gets about the same class proportions.
    n_folds
        Number of folds (>= 2, and no more than the smallest class count without groups).
    seed
        Seed of the shuffle: same inputs and seed give the same folds.
    groups
        Optional group per item (patient): all items of a group land in the same fold
        (``StratifiedGroupKFold``; stratification is then approximate).

    Raises
    ------
    ValueError
        Mismatched lengths, fewer than two folds, or too few items of a class (or groups).
    """
    y = np.asarray(labels)
    n = len(ids)
    if y.shape[0] != n or (groups is not None and len(groups) != n):
        raise ValueError(f"ids ({n}), labels ({y.shape[0]}) and groups must have equal length")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    folds = np.full(n, -1, dtype=int)
    x = np.zeros((n, 1))
    if groups is None:
        min_class = int(np.min(np.unique(y, return_counts=True)[1]))
        if min_class < n_folds:
            raise ValueError(f"smallest class has {min_class} items, fewer than {n_folds} folds")
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, y)
    else:
        g = np.asarray(groups)
        if len(np.unique(g)) < n_folds:
            raise ValueError(f"{len(np.unique(g))} groups, fewer than {n_folds} folds")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(x, y, g)
    for fold, (_, test_idx) in enumerate(splits):
        folds[test_idx] = fold
    return folds


def groups_disjoint(
    groups: Sequence[str] | np.ndarray, folds: Sequence[object] | np.ndarray
) -> bool:
    """True when no group appears in more than one fold (or split)."""
    per_group: dict[str, set[object]] = {}
    for g, f in zip(groups, folds, strict=True):
        per_group.setdefault(str(g), set()).add(f)
    return all(len(s) == 1 for s in per_group.values())


def hashed_unit(key: str, salt: str) -> float:
    """A number in [0, 1) fixed by ``key`` and ``salt`` (SHA-256), uniform over keys."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hashed_folds(ids: Sequence[str], n_folds: int, salt: str) -> np.ndarray:
    """Fold (0..n_folds-1) of each id from a salted hash: adding ids never moves the others.

    Raises
    ------
    ValueError
        Fewer than two folds, or repeated ids.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    return np.array([int(hashed_unit(str(i), salt) * n_folds) for i in ids], dtype=int)


def hashed_sides(
    keys: Sequence[str], val_fraction: float, salt: str, sides: tuple[str, str] = ("val", "train")
) -> dict[str, str]:
    """``sides[0]`` for a key whose salted hash falls below ``val_fraction``, else ``sides[1]``.

    A key's side depends on nothing but the key, the fraction and the salt.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return {
        str(k): sides[0] if hashed_unit(str(k), salt) < val_fraction else sides[1] for k in keys
    }


def fold_balance(labels: Sequence[int] | np.ndarray, folds: Sequence[object]) -> pd.DataFrame:
    """Per fold: items, positives, positive rate and its difference to the whole set's rate."""
    frame = pd.DataFrame({"fold": list(folds), "label": np.asarray(labels).astype(int)})
    table = frame.groupby("fold")["label"].agg(n="size", positives="sum")
    table["positive_rate"] = table["positives"] / table["n"]
    table["rate_minus_overall"] = table["positive_rate"] - frame["label"].mean()
    return table.reset_index()


def single_class_folds(balance: pd.DataFrame, n_folds: int) -> list[int]:
    """Folds holding one class only (their own AUC is undefined; the pooled one is not).

    Raises
    ------
    ValueError
        A fold is empty: a cross-validation would train on everything and test on nothing.
    """
    empty = sorted(set(range(n_folds)) - set(balance["fold"]))
    if empty:
        raise ValueError(f"folds {empty} are empty: more records than folds are needed")
    one_class = balance["positives"].eq(0) | balance["positives"].eq(balance["n"])
    return sorted(int(f) for f in balance.loc[one_class, "fold"])
