"""What a CTG scorer says about itself, and its risk as a record grows (helpers, no I/O).

Shared by ``fetal score-ctg`` (:mod:`stages.ctg.serving.score`) and ``evaluate_ctg``, which draws
the same risk curves; a scorer is a :class:`stages.ctg.models.network.CtgPredictor` or the
registered pyfunc wrapping one (:class:`stages.ctg.models.raw_input.RawInputPredictor`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _inner(scorer: Any) -> Any:
    """The project's predictor behind a pyfunc wrapper (or the scorer itself)."""
    if hasattr(scorer, "unwrap_python_model"):
        return getattr(scorer.unwrap_python_model(), "_predictor", None)
    return scorer


def alert_threshold(scorer: Any) -> float | None:
    """The operating threshold behind ``alert``, when the scorer exposes it."""
    value = getattr(_inner(scorer), "threshold", None)
    return None if value is None else float(value)


def analysed_seconds(scorer: Any) -> float | None:
    """Length (s) of the end of a record the model sees (the project's predictors say it).

    None when the scorer does not say (then the whole record is the analysed window).
    """
    value = getattr(_inner(scorer), "analysed_seconds", None)
    return None if value is None else float(value)


def risk_over_time(
    scorer: Any,
    fhr_bpm: np.ndarray,
    uc: np.ndarray,
    fs_hz: float,
    step_min: float,
    min_minutes: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The model on the record as it grew: (end time in minutes, probability) every step."""
    import pandas as pd

    n_min = fhr_bpm.size / fs_hz / 60.0
    ends = np.arange(min_minutes, n_min + 1e-9, step_min)
    if ends.size == 0 or ends[-1] < n_min - 1e-9:
        ends = np.r_[ends, n_min]
    ends = ends[ends >= min(min_minutes, n_min)]
    cut = [int(round(e * 60 * fs_hz)) for e in ends]
    frame = pd.DataFrame(
        {
            "fhr_bpm": [fhr_bpm[:c] for c in cut],
            "uc": [uc[:c] for c in cut],
            "fs_hz": [fs_hz] * len(cut),
        }
    )
    try:
        return ends, np.asarray(scorer.predict(frame)["probability"], dtype=float)
    except ValueError:
        # Some prefix cannot be scored (e.g. no valid FHR yet): score each alone, NaN for those.
        risk = np.full(len(cut), np.nan)
        for i in range(len(cut)):
            try:
                risk[i] = float(np.asarray(scorer.predict(frame.iloc[[i]])["probability"])[0])
            except ValueError:
                continue
        return ends, risk
