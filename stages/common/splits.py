"""Reproducible splits: stratified K folds at item level or at group (patient) level.

Both modalities use it: CTG folds are record-level (one record per delivery), ultrasound splits
keep every image of a patient on one side (``groups``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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
