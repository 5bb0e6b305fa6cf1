"""Cleaning FHR and UC: signal loss marked, artefacts removed, short gaps interpolated.

Cleaning follows the CTU-UHB papers (Spilka et al. 2012, "Using nonlinear features for fetal
heart rate classification", Biomed. Signal Process. Control 7:350-357; Chudacek et al. 2014,
BMC Pregnancy and Childbirth 14:16): FHR = 0 is signal loss; values outside a physiological
range and samples that jump more than 25 bpm from the previous valid sample are artefacts; gaps
up to 15 s are interpolated and longer gaps stay missing (NaN), never silently filled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
from scipy.interpolate import PchipInterpolator

from stages.ctg.signal.settings import PreprocessCtg


def mark_signal_loss(x: np.ndarray) -> np.ndarray:
    """Float copy of ``x`` with the stored loss code (values <= 0) as NaN."""
    out = np.asarray(x, dtype=np.float64).copy()
    out[~(out > 0)] = np.nan  # also keeps NaN as NaN
    return out


def remove_jumps(
    fhr_bpm: np.ndarray, fs_hz: float, max_jump_bpm: float, min_run_s: float
) -> np.ndarray:
    """Set to NaN short stretches bounded by physiologically impossible jumps.

    Between two consecutive valid samples (across gaps) the FHR cannot change by more than
    ``max_jump_bpm`` (25 bpm in 0.25 s; Spilka et al. 2012): such a jump starts a new run. A run
    is trusted only when it lasts ``min_run_s`` seconds of valid signal, which removes spikes,
    halved/doubled-rate fragments and the short unstable stretches after a lost signal (the
    "stable segment" idea of Bernardes et al. 1991 and SisPorto). Vectorised: no Python loop.

    Parameters
    ----------
    fhr_bpm
        FHR in bpm with NaN where missing.
    fs_hz
        Sampling rate (Hz).
    max_jump_bpm
        Largest plausible change between consecutive valid samples (bpm).
    min_run_s
        Shortest run (s of valid samples) between jumps that is kept.
    """
    out = np.asarray(fhr_bpm, dtype=np.float64).copy()
    idx = np.flatnonzero(~np.isnan(out))
    if idx.size == 0:
        return out
    starts = np.empty(idx.size, dtype=bool)
    starts[0] = True
    starts[1:] = np.abs(np.diff(out[idx])) > max_jump_bpm
    run_id = np.cumsum(starts) - 1
    run_len = np.bincount(run_id)
    short = run_len[run_id] < max(int(round(min_run_s * fs_hz)), 1)
    out[idx[short]] = np.nan
    return out


def _gap_lengths(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each NaN sample: length of its gap and whether the gap is interior; valid indices."""
    valid_idx = np.flatnonzero(~np.isnan(x))
    nan_idx = np.flatnonzero(np.isnan(x))
    pos = np.searchsorted(valid_idx, nan_idx)
    interior = (pos > 0) & (pos < valid_idx.size)
    prev = np.where(pos > 0, valid_idx[np.clip(pos - 1, 0, None)], -1)
    nxt = np.where(pos < valid_idx.size, valid_idx[np.clip(pos, None, valid_idx.size - 1)], -1)
    length = np.where(interior, nxt - prev - 1, x.size)
    return nan_idx, length, valid_idx


def _fill_linear(t: np.ndarray, t_valid: np.ndarray, x_valid: np.ndarray) -> np.ndarray:
    return np.interp(t, t_valid, x_valid)


def _fill_pchip(t: np.ndarray, t_valid: np.ndarray, x_valid: np.ndarray) -> np.ndarray:
    # Shape-preserving cubic Hermite, the "Hermite spline" of the CTU-UHB papers.
    if t_valid.size < 2:
        return _fill_linear(t, t_valid, x_valid)
    return PchipInterpolator(t_valid, x_valid, extrapolate=False)(t)


GAP_FILLERS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "linear": _fill_linear,
    "pchip": _fill_pchip,
}


def fill_short_gaps(
    x: np.ndarray, fs_hz: float, max_gap_s: float, method: str = "linear"
) -> np.ndarray:
    """Interpolate interior NaN gaps of at most ``max_gap_s``; longer and edge gaps stay NaN."""
    out = np.asarray(x, dtype=np.float64).copy()
    if np.isnan(out).all() or not np.isnan(out).any():
        return out
    nan_idx, length, valid_idx = _gap_lengths(out)
    fill = nan_idx[length <= max_gap_s * fs_hz]
    if fill.size:
        out[fill] = GAP_FILLERS[method](fill, valid_idx, out[valid_idx])
    return out


@dataclass(frozen=True)
class CleaningParams:
    """How FHR and UC are cleaned: the cleaning keys of the ``preprocess_ctg`` section.

    ``preprocess_ctg`` and every served model (through :func:`preprocess_signals`) and
    ``featurize_ctg`` build it with :meth:`from_settings`.

    Attributes
    ----------
    max_jump_bpm
        Largest plausible FHR change between consecutive valid samples (bpm).
    max_gap_s
        Interior gaps up to this long (s) are interpolated; longer ones stay NaN.
    min_run_s
        A stretch between two jumps is kept only when it lasts this long (s).
    fhr_min_bpm, fhr_max_bpm
        FHR outside this range is an artefact (bpm).
    gap_fill
        Interpolation for short gaps, a key of :data:`GAP_FILLERS`.
    """

    max_jump_bpm: float
    max_gap_s: float
    min_run_s: float
    fhr_min_bpm: float
    fhr_max_bpm: float
    gap_fill: str

    def __post_init__(self) -> None:
        if self.gap_fill not in GAP_FILLERS:
            raise ValueError(f"unknown gap_fill {self.gap_fill!r}; known: {sorted(GAP_FILLERS)}")

    @classmethod
    def from_settings(cls, pre: PreprocessCtg) -> CleaningParams:
        """The cleaning keys of the typed ``preprocess_ctg`` section."""
        return cls(**{f.name: getattr(pre, f.name) for f in fields(cls)})


def clean_fhr(fhr_bpm: np.ndarray, fs_hz: float, cleaning: CleaningParams) -> np.ndarray:
    """Loss code -> NaN, out-of-range -> NaN, jump artefacts -> NaN, short gaps interpolated.

    Returns the FHR in bpm at ``fs_hz`` with NaN where the signal is missing (gaps longer than
    ``cleaning.max_gap_s``, and before the first / after the last valid sample).
    """
    x = mark_signal_loss(fhr_bpm)
    x[(x < cleaning.fhr_min_bpm) | (x > cleaning.fhr_max_bpm)] = np.nan
    x = remove_jumps(x, fs_hz, cleaning.max_jump_bpm, cleaning.min_run_s)
    return fill_short_gaps(x, fs_hz, cleaning.max_gap_s, cleaning.gap_fill)


def clean_uc(uc: np.ndarray, fs_hz: float, cleaning: CleaningParams) -> np.ndarray:
    """UC with the "not recorded" code (0) as NaN and short gaps interpolated."""
    return fill_short_gaps(mark_signal_loss(uc), fs_hz, cleaning.max_gap_s, cleaning.gap_fill)


def last_window(x: np.ndarray, n_samples: int) -> np.ndarray:
    """The last ``n_samples`` of ``x`` (the end of a record = delivery), NaN-padded on the left."""
    x = np.asarray(x, dtype=np.float64)
    if x.size >= n_samples:
        return x[x.size - n_samples :].copy()
    return np.concatenate([np.full(n_samples - x.size, np.nan), x])
