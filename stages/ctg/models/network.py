"""The CTG fetal-distress network and the predictor the registered model serves.

Architecture after the original LSTM study of intrapartum CTG (an LSTM layer followed by two
dense layers; Petrozziello et al. 2018, "Deep learning for continuous electronic fetal
monitoring in labor", IEEE EMBC: 5866-5869), with an optional Conv1D + max-pooling front-end that
shortens the sequence (1 Hz x 60 min = 3600 steps) before the LSTM, which keeps it trainable on
CPUs (Petrozziello et al. 2019, IEEE Access 7:112026, use convolutions on the same data).

Inputs per time step: normalised FHR ``(fhr_bpm - centre) / scale`` with missing samples set to
0, a mask channel (1 = FHR present) so the network can tell "missing" from "at the centre", and
UC / ``uc_scale``. With ``n_members`` > 1 or ``crop_minutes`` set, the saved model is one Keras
model that averages the members over fixed crops of the window (``averaged_model``, standard
layers only), so the predictor's windowing is unchanged. The model directory holds
``model.keras`` and ``preprocess.json`` (the ``preprocess_ctg`` params, the normalisation, the
alert threshold): nothing pickled.

Keras and TensorFlow are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import canonical_keras_archive
from stages.ctg.signal.preprocessing import preprocess_signals

MODEL_FILE = "model.keras"
CONFIG_FILE = "preprocess.json"
N_CHANNELS = 3
DEFAULT_FS_HZ = 4.0


# --------------------------------------------------------------------------- inputs


def model_inputs(fhr_bpm: np.ndarray, uc: np.ndarray, norm: Mapping[str, float]) -> np.ndarray:
    """Preprocessed sequences -> network input ``(n, T, 3)`` float32.

    Parameters
    ----------
    fhr_bpm, uc : array, shape (n, T) or (T,)
        Output of ``preprocess_signals`` (NaN where missing).
    norm : mapping
        ``fhr_centre_bpm``, ``fhr_scale_bpm``, ``uc_scale``.

    Returns
    -------
    array, shape (n, T, 3)
        Channels: normalised FHR (0 where missing), FHR-present mask, scaled UC (0 where missing).
    """
    fhr = np.atleast_2d(np.asarray(fhr_bpm, dtype=np.float32))
    uc_arr = np.atleast_2d(np.asarray(uc, dtype=np.float32))
    present = ~np.isnan(fhr)
    fhr_n = np.where(present, (fhr - norm["fhr_centre_bpm"]) / norm["fhr_scale_bpm"], 0.0)
    uc_n = np.where(np.isnan(uc_arr), 0.0, uc_arr / norm["uc_scale"])
    return np.stack([fhr_n, present.astype(np.float32), uc_n], axis=-1).astype(np.float32)


def window_steps(train_params: Mapping[str, Any], preprocess_params: Mapping[str, Any]) -> int:
    """Time steps the network sees: the last ``window_minutes`` of the preprocessed sequence."""
    minutes = float(train_params.get("window_minutes") or preprocess_params["last_minutes"])
    minutes = min(minutes, float(preprocess_params["last_minutes"]))
    return int(round(minutes * 60 * float(preprocess_params["fs_out_hz"])))


def normalisation(params: Mapping[str, Any]) -> dict[str, float]:
    """The normalisation constants from the ``train_ctg`` params."""
    return {
        "fhr_centre_bpm": float(params["fhr_centre_bpm"]),
        "fhr_scale_bpm": float(params["fhr_scale_bpm"]),
        "uc_scale": float(params["uc_scale"]),
    }


# --------------------------------------------------------------------------- network


def build_model(seq_len: int, params: Mapping[str, Any], name: str = "ctg_lstm") -> Any:
    """Conv1D front-end (optional) -> LSTM -> dense -> dense(sigmoid), compiled.

    Parameters
    ----------
    seq_len : int
        Input time steps (``last_minutes * 60 * fs_out_hz``).
    params : mapping
        ``train_ctg`` section: ``conv_layers`` (0 = the plain LSTM of the original study),
        ``conv_filters``, ``conv_kernel``, ``conv_pool``, ``units``, ``summary_skip`` (append
        the window means of the input channels to the LSTM state), ``dense_units``,
        ``lstm_readout`` (``last`` | ``mean``), ``dropout``, ``learning_rate``.
    name : str
        Model name (unique per member when several networks are averaged).
    """
    import keras

    inp = keras.Input(shape=(seq_len, N_CHANNELS), name="ctg")
    x = inp
    for i in range(int(params.get("conv_layers", 1))):
        x = keras.layers.Conv1D(
            int(params["conv_filters"]),
            int(params.get("conv_kernel", 7)),
            padding="same",
            activation="relu",
            name=f"conv{i}",
        )(x)
        x = keras.layers.MaxPooling1D(int(params["conv_pool"]), name=f"pool{i}")(x)
    # readout "last": the final LSTM state (the original study); "mean": the LSTM outputs
    # averaged over all steps, so evidence from the whole window reaches the dense layers.
    readout = str(params.get("lstm_readout", "last"))
    if readout not in ("last", "mean"):
        raise ValueError(f"lstm_readout must be 'last' or 'mean', got {readout!r}")
    x = keras.layers.LSTM(
        int(params["units"]),
        return_sequences=readout == "mean",
        name="lstm",
    )(x)
    if readout == "mean":
        x = keras.layers.GlobalAveragePooling1D(name="lstm_mean")(x)
    if params.get("summary_skip", False):
        # Whole-window means of the input channels (mean FHR level, fraction of signal present,
        # mean UC) beside the LSTM state: signal loss alone predicts acidemia (AUC ~0.6).
        summary = keras.layers.GlobalAveragePooling1D(name="summary")(inp)
        x = keras.layers.Concatenate(name="with_summary")([x, summary])
    x = keras.layers.Dropout(float(params["dropout"]))(x)
    x = keras.layers.Dense(int(params["dense_units"]), activation="relu", name="dense")(x)
    x = keras.layers.Dropout(float(params["dropout"]))(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="distress")(x)
    model = keras.Model(inp, out, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(float(params["learning_rate"])),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model


def averaged_model(
    members: list[Any], seq_len: int, crop_len: int = 0, offsets: np.ndarray | None = None
) -> Any:
    """One model that averages ``members`` over fixed crops of the window: what is served.

    Parameters
    ----------
    members : list of keras.Model
        Trained networks (distinct names), each taking ``crop_len`` steps (``seq_len`` when
        ``crop_len`` is 0).
    seq_len : int
        Steps of the window the returned model takes (``window_steps``).
    crop_len : int
        0 = the members see the whole window; otherwise each member scores the crops starting
        at ``offsets`` (test-time averaging over crops, ``crop_offsets``).
    offsets : array of int, optional
        Crop starts; required when ``crop_len`` > 0.

    Returns
    -------
    keras.Model
        Input ``(seq_len, 3)``, output the mean probability ``(1,)``; the single member itself
        when there is one member and no cropping. Built only from standard layers
        (``Cropping1D``, ``Average``), so ``model.keras`` loads without custom objects.
    """
    import keras

    if len(members) == 1 and not crop_len:
        return members[0]
    inp = keras.Input(shape=(int(seq_len), N_CHANNELS), name="ctg")
    views = [inp]
    if crop_len:
        if offsets is None:
            raise ValueError("offsets are required with crop_len > 0")
        views = [
            keras.layers.Cropping1D(
                (int(o), int(seq_len) - int(o) - int(crop_len)), name=f"crop{o}"
            )(inp)
            for o in offsets
        ]
    outs = [m(v) for m in members for v in views]
    out = outs[0] if len(outs) == 1 else keras.layers.Average(name="mean_probability")(outs)
    return keras.Model(inp, out, name="ctg_average")


def _graph_call(model: Any) -> Any:
    """``model(x, training=False)`` as one cached ``tf.function``.

    Called eagerly, Keras runs the LSTM as a Python loop over its 225 steps (~0.3 s a record);
    as a graph the loop is a compiled while-loop. Cached on the model object.
    """
    fn = getattr(model, "_fetal_graph_call", None)
    if fn is None:
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        model._fetal_graph_call = fn
    return fn


def predict_proba(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities ``(n,)`` from a compiled or loaded model, run as a cached graph."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.float64)
    call = _graph_call(model)
    out = [
        np.asarray(call(np.asarray(x[i : i + batch_size], dtype=np.float32)))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).ravel().astype(np.float64)


# --------------------------------------------------------------------------- model directory


def save_model_dir(
    folder: Path,
    model: Any,
    preprocess_params: Mapping[str, Any],
    norm: Mapping[str, float],
    alert_threshold: float | None,
    min_input_minutes: float,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model.keras`` and ``preprocess.json`` into ``folder`` (an atomic_dir tmp)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    canonical_keras_archive(folder / MODEL_FILE)  # same model, same bytes (dvc.lock)
    config = {
        "preprocess_ctg": dict(preprocess_params),
        "normalisation": dict(norm),
        "alert_threshold": alert_threshold,
        "min_input_minutes": float(min_input_minutes),
        "seq_len": int(model.input_shape[1]),
        **(extra or {}),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class CtgPredictor:
    """Raw 4 Hz FHR/UC in, probability of pH < threshold (and an alert flag) out.

    Input, every format giving the same probabilities (malformed input raises ValueError):

    - a DataFrame with columns ``fhr_bpm`` and ``uc`` (each cell a list or array of raw samples,
      CTU-UHB conventions: 0 = missing) and an optional ``fs_hz`` column;
    - a dict with those keys: one record (flat sample lists) or one entry per record (lists of
      lists, or the 2-D arrays MLflow's ``inputs`` format delivers), read without a DataFrame;
    - compact signals: ``fhr_b64`` / ``uc_b64`` in place of ``fhr_bpm`` / ``uc``, the base64 of
      little-endian int16 WFDB digital samples (format 16, as in the CTU-UHB ``.dat`` files),
      physical value = digital / ``gain`` (optional column, default 100 = CTU-UHB's gain).

    NaN, infinite and non-numeric samples are refused (missing samples are 0, as recorded), and
    so are records shorter than ``min_input_minutes`` or longer than ``max_input_minutes``
    (model config; 10 and 180 min by default), which bounds the work one request can ask for.
    """

    DEFAULT_MAX_INPUT_MINUTES = 180.0
    DEFAULT_GAIN = 100.0  # CTU-UHB: physical = digital / 100 for FHR (bpm) and UC
    # signal -> (column of raw samples, column of base64 int16 digital samples)
    SIGNAL_COLUMNS = {"fhr_bpm": ("fhr_bpm", "fhr_b64"), "uc": ("uc", "uc_b64")}

    def __init__(self, model: Any, config: Mapping[str, Any]) -> None:
        self.model = model
        self.config = dict(config)
        self.preprocess_params = dict(config["preprocess_ctg"])
        self.norm = dict(config.get("normalisation", {}))  # a feature model has none
        threshold = config.get("alert_threshold")
        self.threshold = None if threshold is None else float(threshold)
        self.fs_in_hz = float(self.preprocess_params.get("fs_in_hz", DEFAULT_FS_HZ))
        self.min_input_minutes = float(config.get("min_input_minutes", 10.0))
        self.max_input_minutes = float(
            config.get("max_input_minutes", self.DEFAULT_MAX_INPUT_MINUTES)
        )

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
        for i in range(n):
            fs = self._number(columns.get("fs_hz", [None] * n)[i], "fs_hz", i, self.fs_in_hz)
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

    def prepare(self, model_input: Any) -> np.ndarray:
        """Validate raw input and return the network input ``(n, T, 3)``."""
        fhr_rows, uc_rows = [], []
        for i, (fhr, uc, fs) in enumerate(self.raw_records(model_input)):
            f_out, u_out = preprocess_signals(fhr, uc, fs, self.preprocess_params)
            if np.isnan(f_out).all():
                raise ValueError(f"row {i}: no valid FHR sample in the analysed window")
            fhr_rows.append(f_out)
            uc_rows.append(u_out)
        x = model_inputs(np.stack(fhr_rows), np.stack(uc_rows), self.norm)
        # The network sees the last seq_len steps (train_ctg.window_minutes), as in training.
        return x[:, x.shape[1] - int(self.config.get("seq_len", x.shape[1])) :]

    def predict(self, model_input: Any) -> pd.DataFrame:
        """``probability`` per row, plus ``alert`` (probability >= threshold) when one is stored."""
        prob = predict_proba(self.model, self.prepare(model_input))
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


def load_predictor(artifacts: Mapping[str, str]) -> CtgPredictor:
    """The pyfunc loader: ``artifacts["model_dir"]`` holds model.keras and preprocess.json."""
    import keras

    folder = Path(artifacts["model_dir"])
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    return CtgPredictor(model, config)
