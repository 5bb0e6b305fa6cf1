"""Resampling NaN-marked CTG signals: anti-aliased polyphase or plain picking (original study)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from fractions import Fraction

import numpy as np
from scipy.signal import firwin, resample_poly


def _ratio(fs_in_hz: float, fs_out_hz: float) -> Fraction:
    return Fraction(fs_out_hz / fs_in_hz).limit_denominator(1000)


def resample_decimate(
    x: np.ndarray, fs_in_hz: float, fs_out_hz: float, max_missing_frac: float
) -> np.ndarray:
    """Plain picking of the input sample nearest each output time (no anti-alias filter).

    What the original study did (4 Hz -> 1 Hz: every 4th sample). NaN input stays NaN.
    ``max_missing_frac`` is unused (kept for a common signature).
    """
    n_out = int(np.floor(x.size * fs_out_hz / fs_in_hz))
    pick = np.round(np.arange(n_out) * fs_in_hz / fs_out_hz).astype(int)
    return np.asarray(x, dtype=np.float64)[np.clip(pick, 0, x.size - 1)]


@functools.lru_cache(maxsize=16)
def _polyphase_filter(up: int, down: int) -> np.ndarray:
    """resample_poly's own default FIR (Kaiser, beta 5), designed once instead of per call."""
    max_rate = max(up, down)
    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample_polyphase(
    x: np.ndarray, fs_in_hz: float, fs_out_hz: float, max_missing_frac: float
) -> np.ndarray:
    """Anti-aliased polyphase resampling (``scipy.signal.resample_poly``), NaN-aware.

    NaN gaps are bridged linearly (edges held) only so the FIR filter sees a continuous signal;
    afterwards every output sample whose input window (one output period, centred) was more than
    ``max_missing_frac`` missing is set back to NaN, so missing data stays missing.
    """
    x = np.asarray(x, dtype=np.float64)
    ratio = _ratio(fs_in_hz, fs_out_hz)
    n_out = int(np.floor(x.size * fs_out_hz / fs_in_hz))
    missing = np.isnan(x)
    if missing.all():
        return np.full(n_out, np.nan)
    t = np.arange(x.size)
    filled = np.interp(t, t[~missing], x[~missing]) if missing.any() else x
    up, down = ratio.numerator, ratio.denominator
    y = resample_poly(filled, up, down, window=_polyphase_filter(up, down), padtype="line")[:n_out]
    width = max(int(round(fs_in_hz / fs_out_hz)), 1)
    box = np.ones(width)
    # Share of missing samples among the input samples the window covers (edges count less).
    frac = np.convolve(missing.astype(np.float64), box, mode="same") / np.convolve(
        np.ones(x.size), box, mode="same"
    )
    centre = np.clip(np.round(np.arange(n_out) * fs_in_hz / fs_out_hz).astype(int), 0, x.size - 1)
    y[frac[centre] > max_missing_frac] = np.nan
    return y


RESAMPLERS: dict[str, Callable[[np.ndarray, float, float, float], np.ndarray]] = {
    "polyphase": resample_polyphase,
    "decimate": resample_decimate,
}


def fhr_resample(
    x: np.ndarray, fs_in_hz: float, fs_out_hz: float, method: str, max_missing_frac: float
) -> np.ndarray:
    """Resample a NaN-marked signal with one of :data:`RESAMPLERS`."""
    if method not in RESAMPLERS:
        raise ValueError(f"unknown resample method {method!r}; known: {sorted(RESAMPLERS)}")
    if fs_in_hz == fs_out_hz:
        return np.asarray(x, dtype=np.float64).copy()
    return RESAMPLERS[method](x, fs_in_hz, fs_out_hz, max_missing_frac)
