"""Training-time crops of the CTG sequences: random crops for augmentation, fixed crops for
test-time averaging (the ``crop_minutes``/``tta_crops`` variant). Pure NumPy."""

from __future__ import annotations

import numpy as np


def crop_steps(crop_minutes: float, fs_hz: float, window_len: int) -> int:
    """Length in steps of the random training crops at ``fs_hz``, 0 when cropping is off.

    Cropping is off when ``crop_minutes`` is 0 or not shorter than the window
    (``window_len`` steps).
    """
    n = int(round(crop_minutes * 60 * fs_hz))
    return n if 0 < n < window_len else 0


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
