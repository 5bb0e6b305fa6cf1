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

from stages.ctg.signal.wfdb_record import CtgRecord

# (stats column, lowest allowed or None, highest allowed or None, reason)
Limit = tuple[str, float | None, float | None, str]


def record_stats(
    rec: CtgRecord, fhr_min_bpm: float = 50.0, fhr_max_bpm: float = 240.0
) -> dict[str, Any]:
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


def record_limits(params: Mapping[str, Any]) -> list[Limit]:
    """The record-level range rules from the ``validate_ctg`` params, in the suite's order."""
    fs = float(params["fs_hz"])
    return [
        ("fs_hz", fs, fs, "wrong_sampling_rate"),
        ("duration_min", float(params["min_duration_min"]), None, "too_short"),
        ("fhr_loss_frac", None, float(params["max_signal_loss"]), "too_much_signal_loss"),
        (
            "fhr_out_of_range_frac",
            None,
            float(params["max_fhr_out_of_range_frac"]),
            "fhr_out_of_range",
        ),
        ("uc_min", float(params["uc_min"]), None, "uc_out_of_range"),
        ("uc_max", None, float(params["uc_max"]), "uc_out_of_range"),
    ]


def expected_channels(params: Mapping[str, Any]) -> str:
    """The ``channels`` statistic a record must have (``FHR,UC``)."""
    return ",".join(params["channels"])


def record_failures(stats: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """Why a readable record fails the record-level rules: ``reason: detail`` each, [] if none.

    As in the GX suite, a missing (NaN) statistic is not checked (e.g. the out-of-range
    fraction of a record with no FHR sample at all, which signal loss already catches).
    """
    why = []
    if stats["channels"] != expected_channels(params):
        why.append(f"wrong_channels: {stats['channels']}, need {expected_channels(params)}")
    for column, low, high, reason in record_limits(params):
        value = float(stats[column])
        if math.isnan(value):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            allowed = (
                f"[{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]"
            )
            why.append(f"{reason}: {column} {value:.4g} not in {allowed}")
    return why
