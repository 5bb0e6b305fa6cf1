"""FIGO-style features of one CTG window: what featurize_ctg writes and the feature models serve.

Computed on the cleaned 4 Hz FHR (``stages.ctg.signal.cleaning.clean_fhr`` with the
``preprocess_ctg`` cleaning parameters, so the features see the same signal as the network) and
cleaned UC. Definitions follow FIGO 2015 (Ayres-de-Campos et al., "FIGO consensus guidelines on
intrapartum fetal monitoring: cardiotocography", Int J Gynaecol Obstet 131:13-24) and
Dawes-Redman STV/LTV (Dawes et al. 1991), simplified for automatic use:

- baseline: 10-minute running median of the FHR, recomputed without samples > 15 bpm off it;
- acceleration: FHR > baseline + 15 bpm for >= 15 s; deceleration: < baseline - 15 bpm for
  >= 15 s; prolonged: >= 3 min; early/late/variable by the lag of the deceleration nadir after
  the nearest contraction peak (early |lag| <= 15 s, late 15-60 s after the peak);
- STV: mean absolute difference of successive 3.75 s epoch means, as pulse interval (ms);
  LTV: mean per-minute range of the epoch pulse intervals (ms).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.signal import find_peaks

from stages.common.settings import settings
from stages.ctg.signal.cleaning import CleaningParams, clean_fhr, clean_uc, last_window

EPISODE_BPM = 15.0  # FIGO: accelerations/decelerations are 15 bpm off the baseline
EPISODE_MIN_S = 15.0  # ... lasting at least 15 s
PROLONGED_S = 180.0  # FIGO prolonged deceleration: > 3 min
TACHY_BPM = 160.0
BRADY_BPM = 110.0
REDUCED_VARIABILITY_BPM = 5.0  # FIGO reduced variability: bandwidth < 5 bpm


@settings
class FeaturizeCtg:
    """``featurize_ctg``: the last ``window_min`` minutes of each record are described (min);
    the served feature models describe the same window."""

    window_min: float


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the True runs of ``mask``."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.diff(padded)
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def fhr_baseline(fhr_bpm: np.ndarray, fs_hz: float, window_min: float = 10.0) -> np.ndarray:
    """Running baseline (bpm): 10-min centred median, re-estimated without episodes."""
    win = int(window_min * 60 * fs_hz)
    min_periods = int(60 * fs_hz)
    s = pd.Series(fhr_bpm)
    base = s.rolling(win, center=True, min_periods=min_periods).median()
    calm = s.where((s - base).abs() <= EPISODE_BPM)
    base = calm.rolling(win, center=True, min_periods=min_periods).median()
    return base.interpolate(limit_direction="both").to_numpy()


def _epoch_pulse_interval_ms(fhr_bpm: np.ndarray, fs_hz: float) -> np.ndarray:
    n = int(round(3.75 * fs_hz))
    k = fhr_bpm.size // n
    epochs = fhr_bpm[: k * n].reshape(k, n)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(epochs).sum(axis=1) >= n / 2
        mean_bpm = np.where(
            valid, np.nanmean(np.where(valid[:, None], epochs, 0.0), axis=1), np.nan
        )
    return 60000.0 / mean_bpm


def variability(fhr_bpm: np.ndarray, fs_hz: float) -> dict[str, float]:
    """Dawes-Redman STV/LTV (ms) and per-minute FHR range (bpm)."""
    pi_ms = _epoch_pulse_interval_ms(fhr_bpm, fs_hz)
    stv = float(np.nanmean(np.abs(np.diff(pi_ms)))) if np.isfinite(pi_ms).sum() > 1 else np.nan
    per_min = 16  # 16 epochs of 3.75 s = 1 min
    m = pi_ms.size // per_min
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN minutes: NaN is the answer
        pi_min = pi_ms[: m * per_min].reshape(m, per_min)
        ltv = float(np.nanmean(np.nanmax(pi_min, axis=1) - np.nanmin(pi_min, axis=1)))
        n_min = int(60 * fs_hz)
        k = fhr_bpm.size // n_min
        minutes = fhr_bpm[: k * n_min].reshape(k, n_min)
        ok = np.isfinite(minutes).mean(axis=1) >= 0.5
        rng_bpm = np.nanmax(minutes[ok], axis=1) - np.nanmin(minutes[ok], axis=1)
    return {
        "stv_ms": stv,
        "ltv_ms": ltv,
        "ltv_bpm": float(np.median(rng_bpm)) if rng_bpm.size else np.nan,
        "reduced_variability_frac": (
            float(np.mean(rng_bpm < REDUCED_VARIABILITY_BPM)) if rng_bpm.size else np.nan
        ),
    }


def contraction_peaks(uc: np.ndarray, fs_hz: float, prominence: float = 10.0) -> np.ndarray:
    """Sample indices of contraction peaks: 30 s-smoothed UC peaks, >= 60 s apart."""
    s = pd.Series(uc).rolling(int(30 * fs_hz), center=True, min_periods=1).mean()
    filled = s.interpolate(limit_direction="both").fillna(0.0).to_numpy()
    peaks, _ = find_peaks(filled, prominence=prominence, distance=int(60 * fs_hz))
    return peaks[np.isfinite(uc[peaks])] if peaks.size else peaks


def decelerations(
    fhr_bpm: np.ndarray, base_bpm: np.ndarray, uc_peaks: np.ndarray, fs_hz: float
) -> dict[str, float]:
    """Counts, area and timing classes of decelerations (see module docstring)."""
    drop = base_bpm - fhr_bpm
    below = np.nan_to_num(drop, nan=0.0) > EPISODE_BPM
    starts, ends = runs(below)
    keep = (ends - starts) >= EPISODE_MIN_S * fs_hz
    starts, ends = starts[keep], ends[keep]
    out = {
        "decel_count": float(starts.size),
        "early_decel_count": 0.0,
        "late_decel_count": 0.0,
        "variable_decel_count": 0.0,
        "prolonged_decel_count": 0.0,
        "decel_area_bpm_min": 0.0,
        "max_decel_depth_bpm": 0.0,
    }
    for s, e in zip(starts, ends, strict=True):
        seg = np.nan_to_num(drop[s:e], nan=0.0)
        nadir = s + int(np.argmax(seg))
        out["decel_area_bpm_min"] += float(seg.sum() / fs_hz / 60.0)
        out["max_decel_depth_bpm"] = max(out["max_decel_depth_bpm"], float(seg.max()))
        if (e - s) >= PROLONGED_S * fs_hz:
            out["prolonged_decel_count"] += 1
            continue
        lag_s = (nadir - uc_peaks) / fs_hz if uc_peaks.size else np.array([np.inf])
        near = lag_s[np.argmin(np.abs(lag_s))]
        if abs(near) <= 15.0:
            out["early_decel_count"] += 1
        elif 15.0 < near <= 60.0:
            out["late_decel_count"] += 1
        else:
            out["variable_decel_count"] += 1
    out["decel_time_frac"] = float((ends - starts).sum() / max(fhr_bpm.size, 1))
    return out


def figo_features(fhr_bpm: np.ndarray, uc: np.ndarray, fs_hz: float) -> dict[str, float]:
    """~20 features of one cleaned window (FHR in bpm and UC, NaN where missing)."""
    valid = np.isfinite(fhr_bpm)
    feats: dict[str, float] = {"signal_loss_frac": float(1.0 - valid.mean())}
    if valid.sum() < 60 * fs_hz:  # less than a minute of signal: nothing else is measurable
        return feats
    base = fhr_baseline(fhr_bpm, fs_hz)
    valid_hours = valid.sum() / fs_hz / 3600.0
    peaks = contraction_peaks(uc, fs_hz)
    above = np.nan_to_num(fhr_bpm - base, nan=0.0) > EPISODE_BPM
    a_start, a_end = runs(above)
    n_accel = int(((a_end - a_start) >= EPISODE_MIN_S * fs_hz).sum())
    decel = decelerations(fhr_bpm, base, peaks, fs_hz)
    uc_minutes = np.isfinite(uc).sum() / fs_hz / 60.0
    feats.update(
        baseline_bpm=float(np.nanmedian(base[valid])),
        fhr_mean_bpm=float(np.nanmean(fhr_bpm)),
        fhr_std_bpm=float(np.nanstd(fhr_bpm)),
        **variability(fhr_bpm, fs_hz),
        accel_per_hour=n_accel / valid_hours,
        **{k: (v / valid_hours if k.endswith("_count") else v) for k, v in decel.items()},
        uc_per_10min=float(peaks.size / uc_minutes * 10.0) if uc_minutes > 1 else np.nan,
        tachycardia_frac=float(np.mean(base[valid] > TACHY_BPM)),
        bradycardia_frac=float(np.mean(base[valid] < BRADY_BPM)),
    )
    # Counts above are per hour of valid signal so records of different length compare.
    return {k.replace("_count", "_per_hour"): v for k, v in feats.items()}


def record_features(
    fhr_bpm: np.ndarray, uc: np.ndarray, fs_hz: float, window_min: float, cleaning: CleaningParams
) -> dict[str, float]:
    """Clean a raw record (``preprocess_ctg`` cleaning), crop the last window, featurise it."""
    n = int(window_min * 60 * fs_hz)
    fhr = last_window(clean_fhr(fhr_bpm, fs_hz, cleaning), n)
    return figo_features(fhr, last_window(clean_uc(uc, fs_hz, cleaning), n), fs_hz)
