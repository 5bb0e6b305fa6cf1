"""Raw CTG input as every served ``ctg-distress`` model takes it: parsed, checked, refused by name.

:class:`RawInputPredictor` is the part every family shares (the network's
:class:`stages.ctg.models.network.CtgPredictor` and the feature families'
:class:`stages.ctg.models.family_predictor.FamilyPredictor`): the input formats, the checks and
the output. A subclass says how records become probabilities (:meth:`probabilities`).

Input, every format giving the same probabilities (malformed input raises ValueError):

- a DataFrame with columns ``fhr_bpm`` and ``uc`` (each cell a list or array of raw samples,
  CTU-UHB conventions: 0 = missing) and an optional ``fs_hz`` column;
- a dict with those keys: one record (flat sample lists) or one entry per record (lists of
  lists, or the 2-D arrays MLflow's ``inputs`` format delivers), read without a DataFrame;
- compact signals: ``fhr_b64`` / ``uc_b64`` in place of ``fhr_bpm`` / ``uc``, the base64 of
  little-endian int16 WFDB digital samples (format 16, as in the CTU-UHB ``.dat`` files),
  physical value = digital / ``gain`` (optional column, default 100 = CTU-UHB's gain).

NaN, infinite and non-numeric samples are refused (missing samples are 0, as recorded), and so
are records shorter than ``ctg_signal.min_input_minutes`` or longer than
``ctg_signal.max_input_minutes`` (saved with the model), which bounds the work one request can ask
for; a record's ``fs_hz`` must be ``ctg_signal.fs_hz``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from stages.common.settings import parse_settings
from stages.ctg.signal.settings import CtgSignal, PreprocessCtg


class RawInputPredictor:
    """Raw 4 Hz FHR/UC in (module docstring), probability and alert flag out.

    ``config`` (a saved model's JSON) holds ``ctg_signal`` and ``preprocess_ctg`` (the typed
    sections, validated here: a missing or unknown key is an error naming it) and
    ``alert_threshold`` (null = no alert column).
    """

    DEFAULT_GAIN = 100.0  # CTU-UHB: physical = digital / 100 for FHR (bpm) and UC
    # signal -> (column of raw samples, column of base64 int16 digital samples)
    SIGNAL_COLUMNS = {"fhr_bpm": ("fhr_bpm", "fhr_b64"), "uc": ("uc", "uc_b64")}

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        self.signal = parse_settings(CtgSignal, config["ctg_signal"], "ctg_signal")
        self.preprocess = parse_settings(PreprocessCtg, config["preprocess_ctg"], "preprocess_ctg")
        threshold = config["alert_threshold"]
        self.threshold = None if threshold is None else float(threshold)
        self.fs_in_hz = self.signal.fs_hz
        self.min_input_minutes = self.signal.min_input_minutes
        self.max_input_minutes = self.signal.max_input_minutes

    @property
    def analysed_seconds(self) -> float:
        """Length (s) of the end of a record the model sees (subclasses say)."""
        raise NotImplementedError

    def probabilities(self, model_input: Any) -> np.ndarray:
        """Validated raw input -> probability per record (subclasses say how)."""
        raise NotImplementedError

    @staticmethod
    def encode_b64(samples: np.ndarray, gain: float = DEFAULT_GAIN) -> str:
        """Raw samples -> the compact ``*_b64`` form (clients' side of the format).

        ``round(samples * gain)`` as little-endian int16, base64: exact for CTU-UHB records
        (0.25 bpm FHR and 0.5 UC steps at gain 100). Raises ValueError when a sample does not
        fit int16 at this gain.
        """
        digital = np.round(np.asarray(samples, dtype=np.float64) * gain)
        if not np.isfinite(digital).all() or np.abs(digital).max(initial=0) > 32767:
            raise ValueError(f"samples must be finite and fit int16 at gain {gain:g}")
        return base64.b64encode(digital.astype("<i2").tobytes()).decode("ascii")

    # ---- input checks
    def _columns(self, model_input: Any) -> tuple[dict[str, list[Any]], int]:
        """``column -> one value per record`` and the number of records."""
        if isinstance(model_input, pd.DataFrame):
            frame = model_input
            return {str(c): frame[c].tolist() for c in frame.columns}, len(frame)
        if not isinstance(model_input, Mapping):
            raise ValueError(
                f"input must be a DataFrame or dict with columns fhr_bpm and uc, "
                f"got {type(model_input).__name__}"
            )
        data = dict(model_input)
        # One record given as flat sample lists (or base64 strings) -> one row.
        if any(_one_record(data.get(k)) for k in ("fhr_bpm", "uc", "fhr_b64", "uc_b64")):
            data = {k: [v] for k, v in data.items()}
        columns: dict[str, list[Any]] = {}
        scalars: dict[str, Any] = {}  # one value (fs_hz, gain) for every record
        for key, value in data.items():
            if isinstance(value, (str, bytes)) or value is None or np.isscalar(value):
                scalars[str(key)] = value
            elif isinstance(value, np.ndarray) and value.ndim == 0:
                scalars[str(key)] = value.item()
            else:
                columns[str(key)] = list(value)
        sizes = {k: len(v) for k, v in columns.items()}
        n = max(sizes.values(), default=1 if scalars else 0)
        if any(size != n for size in sizes.values()):
            raise ValueError(f"cannot make a table of the input: records per column {sizes}")
        return {**columns, **{k: [v] * n for k, v in scalars.items()}}, n

    def _signal(self, value: Any, column: str, row: int, gain: float) -> np.ndarray:
        if column.endswith("_b64"):
            if not isinstance(value, str):
                raise ValueError(f"row {row}: {column} must be a base64 string")
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"row {row}: {column} is not valid base64: {exc}") from exc
            if len(raw) % 2:
                raise ValueError(f"row {row}: {column} holds {len(raw)} bytes, not int16 samples")
            return np.frombuffer(raw, dtype="<i2").astype(np.float64) / gain
        if isinstance(value, str) or np.isscalar(value) or value is None:
            raise ValueError(
                f"row {row}: {column} must be a sequence of samples, got {value!r:.40}"
            )
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as exc:  # ragged nested lists
            raise ValueError(f"row {row}: {column} is not a flat sequence of samples") from exc
        # Strings (even "140.25"), None and objects are refused, not converted.
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"row {row}: {column} holds non-numeric values")
        arr = arr.astype(np.float64, copy=False).ravel()
        if not np.isfinite(arr).all():
            kind = "NaN" if np.isnan(arr).any() else "infinite"
            raise ValueError(
                f"row {row}: {column} holds {kind} values; mark missing samples with 0 "
                f"(CTU-UHB convention)"
            )
        return arr

    def _number(self, value: Any, column: str, row: int, default: float) -> float:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return default
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"row {row}: {column} {value!r:.40} is not a number") from exc

    def _length_checked(self, n_samples: int, fs: float, row: int) -> None:
        min_n = int(self.min_input_minutes * 60 * fs)
        max_n = int(self.max_input_minutes * 60 * fs)
        if not min_n <= n_samples <= max_n:
            bound = "at least" if n_samples < min_n else "at most"
            minutes, limit = (
                (self.min_input_minutes, min_n)
                if n_samples < min_n
                else (self.max_input_minutes, max_n)
            )
            raise ValueError(
                f"row {row}: {n_samples} samples ({n_samples / fs / 60:.1f} min); the model "
                f"takes {bound} {minutes:g} min ({limit} samples at {fs:g} Hz)"
            )

    def raw_records(self, model_input: Any) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Validate raw input: ``(fhr_bpm, uc, fs_hz)`` per record, raw samples (0 = missing)."""
        columns, n = self._columns(model_input)
        chosen = {}
        for signal, options in self.SIGNAL_COLUMNS.items():
            found = [c for c in options if c in columns]
            if len(found) != 1:
                raise ValueError(
                    f"input is missing column(s) {[signal]}; expected fhr_bpm and uc (raw "
                    f"samples) or fhr_b64 and uc_b64 (base64 int16, optional gain), optional "
                    f"fs_hz; got {sorted(columns)}"
                    if not found
                    else f"give {signal} once, as {options[0]} or {options[1]}, not both"
                )
            chosen[signal] = found[0]
        if n == 0:
            raise ValueError("input has no rows")
        records = []
        # a request's optional fs_hz column (absent: the model's rate), not a params key
        fs_column = columns["fs_hz"] if "fs_hz" in columns else [None] * n
        for i in range(n):
            fs = self._number(fs_column[i], "fs_hz", i, self.fs_in_hz)
            if fs != self.fs_in_hz:
                raise ValueError(
                    f"row {i}: sampling rate {fs:g} Hz; the model takes {self.fs_in_hz:g} Hz"
                )
            gain = self._number(columns.get("gain", [None] * n)[i], "gain", i, self.DEFAULT_GAIN)
            if not gain > 0:
                raise ValueError(f"row {i}: gain must be positive, got {gain:g}")
            fhr, uc = (
                self._signal(columns[c][i], c, i, gain) for c in (chosen["fhr_bpm"], chosen["uc"])
            )
            if fhr.size != uc.size:
                raise ValueError(f"row {i}: fhr_bpm has {fhr.size} samples but uc has {uc.size}")
            self._length_checked(fhr.size, fs, i)
            records.append((fhr, uc, fs))
        return records

    def predict(self, model_input: Any) -> pd.DataFrame:
        """``probability`` per row, plus ``alert`` (probability >= threshold) when one is stored."""
        prob = np.asarray(self.probabilities(model_input), dtype=np.float64)
        out = pd.DataFrame({"probability": prob})
        if self.threshold is not None:
            out["alert"] = prob >= self.threshold
        return out


def _one_record(value: Any) -> bool:
    """Whether a dict value is one record's signal (samples or base64), not one per record."""
    if isinstance(value, str):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "biuf"
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and np.isscalar(value[0])
        and not isinstance(value[0], str)
    )
