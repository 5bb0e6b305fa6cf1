"""Record-level CTG checks shared by ``validate_ctg`` (the GX suite) and ``fetal score-ctg``.

One statistics function (:func:`record_stats`) and one rule table (:func:`record_limits`) feed
both: ``validate_ctg`` turns the table into Great Expectations, scoring evaluates it directly
with :func:`record_failures`, so a record the pipeline would quarantine is refused at scoring
with the same reason, under the same ``validate_ctg`` thresholds. The outcome checks (pH) and
the table checks (unique record names) are the suite's alone: scored records have no outcome.
Pure functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from stages.common.settings import settings
from stages.ctg.signal.wfdb_record import CtgRecord

# (stats column, lowest allowed or None, highest allowed or None, reason)
Limit = tuple[str, float | None, float | None, str]


@settings
class ValidateCtg:
    """``validate_ctg``: what a raw record must meet (the sampling rate: ``ctg_signal.fs_hz``).

    Attributes
    ----------
    channels
        Required signal names, in order.
    fhr_min_bpm, fhr_max_bpm
        Plausible FHR range (bpm) of the out-of-range statistic.
    max_fhr_out_of_range_frac
        Highest fraction of the present FHR samples outside that range.
    uc_min, uc_max
        Plausible UC range (sensor units).
    ph_min, ph_max
        Plausible umbilical-artery pH range.
    min_duration_min
        Shortest accepted recording (min).
    max_signal_loss
        Fraction of FHR lost above which a record fails.
    max_fail_fraction
        Fraction of failing records above which the stage fails.
    """

    channels: tuple[str, ...]
    fhr_min_bpm: float
    fhr_max_bpm: float
    max_fhr_out_of_range_frac: float
    uc_min: float
    uc_max: float
    ph_min: float
    ph_max: float
    min_duration_min: float
    max_signal_loss: float
    max_fail_fraction: float


@settings
class ScoreCtg:
    """``score_ctg``: ``fetal score-ctg`` abstains below ``min_signal_fraction`` of FHR present
    in the analysed window and reads no file over ``max_file_mb`` (MB)."""

    min_signal_fraction: float
    max_file_mb: float


def record_stats(rec: CtgRecord, fhr_min_bpm: float, fhr_max_bpm: float) -> dict[str, Any]:
    """Statistics of one readable record that the suite checks (FHR 0 = loss, not range)."""
    fhr = rec.fhr_bpm
    present = fhr[fhr > 0]
    n = fhr.size
    return {
        "readable": True,
        "read_error": "",
        "fs_hz": float(rec.fs_hz),
        "channels": ",".join(rec.sig_names),
        "n_samples": int(n),
        "duration_min": n / rec.fs_hz / 60.0 if rec.fs_hz > 0 else float("nan"),
        "fhr_loss_frac": float(1.0 - present.size / n) if n else 1.0,
        "fhr_out_of_range_frac": (
            float(np.mean((present < fhr_min_bpm) | (present > fhr_max_bpm)))
            if present.size
            else float("nan")
        ),
        "uc_min": float(rec.uc.min()) if n else float("nan"),
        "uc_max": float(rec.uc.max()) if n else float("nan"),
        "ph_text": rec.clinical.get("pH", ""),
        "ph": rec.ph,
    }


def record_limits(rules: ValidateCtg, fs_hz: float) -> list[Limit]:
    """The record-level range rules, in the suite's order; ``fs_hz``: ``ctg_signal.fs_hz``."""
    return [
        ("fs_hz", fs_hz, fs_hz, "wrong_sampling_rate"),
        ("duration_min", rules.min_duration_min, None, "too_short"),
        ("fhr_loss_frac", None, rules.max_signal_loss, "too_much_signal_loss"),
        ("fhr_out_of_range_frac", None, rules.max_fhr_out_of_range_frac, "fhr_out_of_range"),
        ("uc_min", rules.uc_min, None, "uc_out_of_range"),
        ("uc_max", None, rules.uc_max, "uc_out_of_range"),
    ]


def expected_channels(rules: ValidateCtg) -> str:
    """The ``channels`` statistic a record must have (``FHR,UC``)."""
    return ",".join(rules.channels)


def record_failures(stats: Mapping[str, Any], rules: ValidateCtg, fs_hz: float) -> list[str]:
    """Why a readable record fails the record-level rules: ``reason: detail`` each, [] if none.

    As in the GX suite, a missing (NaN) statistic is not checked (e.g. the out-of-range
    fraction of a record with no FHR sample at all, which signal loss already catches).
    """
    why = []
    if stats["channels"] != expected_channels(rules):
        why.append(f"wrong_channels: {stats['channels']}, need {expected_channels(rules)}")
    for column, low, high, reason in record_limits(rules, fs_hz):
        value = float(stats[column])
        if math.isnan(value):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            allowed = (
                f"[{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]"
            )
            why.append(f"{reason}: {column} {value:.4g} not in {allowed}")
    return why
