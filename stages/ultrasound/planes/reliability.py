"""Reliability diagrams of the plane classifier: a DVC plot CSV, a PNG and the ECE per variant.

The confidence of a multi-class prediction is its top probability; the diagram bins it
(equal-width bins) against the share of correct predictions in each bin, and the expected
calibration error (ECE) is the bin-weighted gap (:mod:`stages.common.ml.calibration`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.io import write_csv
from stages.common.ml import plots
from stages.common.ml.calibration import expected_calibration_error, reliability_table


def reliability_rows(probs: Mapping[str, np.ndarray], y: np.ndarray, n_bins: int) -> pd.DataFrame:
    """One row per (variant, non-empty bin): variant, bin_low, count, confidence, accuracy."""
    frames = [
        pd.DataFrame({"variant": name, **reliability_table(p, y, n_bins)})
        for name, p in probs.items()
    ]
    cols = ["variant", "bin_low", "count", "confidence", "accuracy"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def write_reliability(
    folder: str | Path,
    probs: Mapping[str, np.ndarray],
    y: np.ndarray,
    n_bins: int,
    title: str,
) -> dict[str, float]:
    """``reliability.csv`` and ``reliability.png`` in ``folder``; returns {variant: ECE}.

    ``probs`` maps a variant (e.g. ``uncalibrated``, ``temperature_scaled``) to the plane
    probabilities (N, K) of the same images, whose true plane indices are ``y``.
    """
    folder = Path(folder)
    rows = reliability_rows(probs, y, n_bins)
    write_csv(folder / "reliability.csv", rows)
    tables = {
        name: {"predicted": g["confidence"].to_numpy(), "observed": g["accuracy"].to_numpy()}
        for name, g in rows.groupby("variant", sort=False)
    }
    plots.save_figure(plots.calibration_figure(tables, title), folder / "reliability.png")
    return {name: expected_calibration_error(p, y, n_bins) for name, p in probs.items()}
