"""Training-time crops of the CTG sequences: random crops for augmentation, fixed crops for
test-time averaging. Pure NumPy, used by ``train_ctg``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from stages.ctg.models.network import window_steps


def crop_steps(train_params: Mapping[str, Any], preprocess_params: Mapping[str, Any]) -> int:
    """Length in steps of the random training crops, 0 when cropping is off.

    Cropping is off when ``crop_minutes`` is 0 (or absent) or not shorter than the window.
    """
    minutes = float(train_params.get("crop_minutes") or 0.0)
    n = int(round(minutes * 60 * float(preprocess_params["fs_out_hz"])))
    return n if 0 < n < window_steps(train_params, preprocess_params) else 0


def crop_offsets(seq_len: int, crop_len: int, n_crops: int) -> np.ndarray:
    """Start indices of ``n_crops`` evenly spaced crops of ``crop_len`` steps in ``seq_len``.

    The last crop always ends at the end of the window (the most recent minutes); with
    ``n_crops >= 2`` the first starts at 0. Duplicates (window barely longer than the crop)
    are dropped.
    """
    last = int(seq_len) - int(crop_len)
    if last < 0:
        raise ValueError(f"crop of {crop_len} steps is longer than the window ({seq_len})")
    if int(n_crops) <= 1:
        return np.array([last], dtype=int)
    return np.unique(np.round(np.linspace(0, last, int(n_crops))).astype(int))


def random_crops(x: np.ndarray, crop_len: int, rng: np.random.Generator) -> np.ndarray:
    """One crop of ``crop_len`` steps per sequence, at a uniformly random start.

    Parameters
    ----------
    x : array, shape (n, T, c)
    crop_len : int
        Steps per crop, at most T.
    rng : numpy.random.Generator

    Returns
    -------
    array, shape (n, crop_len, c)
    """
    starts = rng.integers(0, x.shape[1] - crop_len + 1, size=x.shape[0])
    idx = starts[:, None] + np.arange(crop_len)[None, :]
    return np.take_along_axis(x, idx[:, :, None], axis=1)


def fixed_crops(x: np.ndarray, crop_len: int, offsets: np.ndarray) -> np.ndarray:
    """The crops at ``offsets`` of every sequence, stacked offset-major: ``(len(offsets) * n,
    crop_len, c)``."""
    return np.concatenate([x[:, o : o + crop_len] for o in offsets], axis=0)
