"""The one entry point from a raw record to model input: clean, crop the end, resample.

``preprocess_signals`` turns a raw 4 Hz record into model input; the ``preprocess_ctg`` stage
and the registered CTG model both call it, so raw input in gives the same arrays the stage
writes.
"""

from __future__ import annotations

import numpy as np

from stages.ctg.signal.cleaning import CleaningParams, clean_fhr, clean_uc, last_window
from stages.ctg.signal.resampling import fhr_resample
from stages.ctg.signal.settings import PreprocessCtg


def output_length(pre: PreprocessCtg) -> int:
    """Samples per output sequence: ``last_minutes * 60 * fs_out_hz``."""
    return int(round(pre.last_minutes * 60 * pre.fs_out_hz))


def preprocess_signals(
    fhr_bpm: np.ndarray, uc: np.ndarray, fs_in_hz: float, pre: PreprocessCtg
) -> tuple[np.ndarray, np.ndarray]:
    """Raw record (CTU-UHB conventions) -> fixed-length cleaned, resampled FHR and UC.

    Parameters
    ----------
    fhr_bpm, uc
        Raw signals at ``fs_in_hz`` as stored (FHR in bpm, 0 = signal loss; UC 0 = not recorded).
    fs_in_hz
        Their sampling rate (``ctg_signal.fs_hz``, 4 Hz in CTU-UHB).
    pre
        The ``preprocess_ctg`` settings: ``fs_out_hz``, ``last_minutes``, ``resample_method``,
        ``max_missing_frac`` and the cleaning (:meth:`CleaningParams.from_settings`).

    Returns
    -------
    (fhr_bpm, uc)
        float32 arrays of length ``last_minutes * 60 * fs_out_hz``: the last minutes before
        delivery, NaN where missing, NaN-padded on the left when the record is shorter.
    """
    cleaning = CleaningParams.from_settings(pre)
    fhr = clean_fhr(fhr_bpm, fs_in_hz, cleaning)
    uc_clean = clean_uc(uc, fs_in_hz, cleaning)
    n_out = output_length(pre)
    # Crop in the input rate to a whole number of output samples, then resample.
    n_in = int(round(n_out * fs_in_hz / pre.fs_out_hz))
    out = []
    for x in (fhr, uc_clean):
        y = fhr_resample(
            last_window(x, n_in), fs_in_hz, pre.fs_out_hz, pre.resample_method,
            pre.max_missing_frac,
        )  # fmt: skip
        out.append(last_window(y, n_out).astype(np.float32))
    return out[0], out[1]
