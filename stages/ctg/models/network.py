"""The CTG fetal-distress network and the predictor the registered model serves.

Architecture after the original LSTM study of intrapartum CTG (an LSTM layer followed by two
dense layers; Petrozziello et al. 2018, "Deep learning for continuous electronic fetal
monitoring in labor", IEEE EMBC: 5866-5869), with a Conv1D + max-pooling front-end that
shortens the sequence (1 Hz x 60 min = 3600 steps) before the LSTM, which keeps it trainable on
CPUs (Petrozziello et al. 2019, IEEE Access 7:112026, use convolutions on the same data).

Inputs per time step: normalised FHR ``(fhr_bpm - centre) / scale`` with missing samples set to
0, a mask channel (1 = FHR present) so the network can tell "missing" from "at the centre", and
UC / ``uc_scale``. The model directory holds ``model.keras`` and ``preprocess.json`` (the
``ctg_signal`` and ``preprocess_ctg`` settings, the normalisation, the input length, the alert
threshold): nothing pickled, and every key the predictor reads.

Keras and TensorFlow are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.io import canonical_keras_archive
from stages.ctg.models.raw_input import RawInputPredictor
from stages.ctg.models.settings import TrainCtg
from stages.ctg.signal.preprocessing import preprocess_signals
from stages.ctg.signal.settings import CtgSignal, PreprocessCtg

MODEL_FILE = "model.keras"
CONFIG_FILE = "preprocess.json"
N_CHANNELS = 3
READOUTS = ("last", "mean")  # lstm_readout: the final LSTM state | the mean over all steps


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Normalisation:
    """Input scaling of the network (``train_ctg``): saved with the model."""

    fhr_centre_bpm: float
    fhr_scale_bpm: float
    uc_scale: float


def model_inputs(fhr_bpm: np.ndarray, uc: np.ndarray, norm: Normalisation) -> np.ndarray:
    """Preprocessed sequences -> network input ``(n, T, 3)`` float32.

    Parameters
    ----------
    fhr_bpm, uc : array, shape (n, T) or (T,)
        Output of ``preprocess_signals`` (NaN where missing).
    norm : Normalisation
        ``fhr_centre_bpm``, ``fhr_scale_bpm``, ``uc_scale``.

    Returns
    -------
    array, shape (n, T, 3)
        Channels: normalised FHR (0 where missing), FHR-present mask, scaled UC (0 where missing).
    """
    fhr = np.atleast_2d(np.asarray(fhr_bpm, dtype=np.float32))
    uc_arr = np.atleast_2d(np.asarray(uc, dtype=np.float32))
    present = ~np.isnan(fhr)
    fhr_n = np.where(present, (fhr - norm.fhr_centre_bpm) / norm.fhr_scale_bpm, 0.0)
    uc_n = np.where(np.isnan(uc_arr), 0.0, uc_arr / norm.uc_scale)
    return np.stack([fhr_n, present.astype(np.float32), uc_n], axis=-1).astype(np.float32)


def window_steps(window_minutes: float, pre: PreprocessCtg) -> int:
    """Time steps the network sees: the last ``window_minutes`` of the preprocessed sequence.

    Raises ValueError when the window is longer than the sequence (``last_minutes``).
    """
    if window_minutes > pre.last_minutes:
        raise ValueError(
            f"train_ctg.window_minutes {window_minutes:g} is longer than "
            f"preprocess_ctg.last_minutes {pre.last_minutes:g}"
        )
    return int(round(window_minutes * 60 * pre.fs_out_hz))


def normalisation(net: TrainCtg) -> Normalisation:
    """The normalisation constants of the ``train_ctg`` settings."""
    return Normalisation(net.fhr_centre_bpm, net.fhr_scale_bpm, net.uc_scale)


# --------------------------------------------------------------------------- network


def encoder(inp: Any, net: TrainCtg) -> Any:
    """Conv1D + max-pool blocks (``conv_layers``), then the LSTM read out as ``lstm_readout``."""
    import keras

    if net.lstm_readout not in READOUTS:
        raise ValueError(f"lstm_readout must be one of {READOUTS}, got {net.lstm_readout!r}")
    x = inp
    for i in range(net.conv_layers):
        x = keras.layers.Conv1D(
            net.conv_filters, net.conv_kernel, padding="same", activation="relu", name=f"conv{i}"
        )(x)
        x = keras.layers.MaxPooling1D(net.conv_pool, name=f"pool{i}")(x)
    # readout "last": the final LSTM state (the original study); "mean": the LSTM outputs
    # averaged over all steps, so evidence from the whole window reaches the dense layers.
    x = keras.layers.LSTM(net.units, return_sequences=net.lstm_readout == "mean", name="lstm")(x)
    if net.lstm_readout == "mean":
        x = keras.layers.GlobalAveragePooling1D(name="lstm_mean")(x)
    return x


def classifier_head(x: Any, net: TrainCtg) -> Any:
    """Dropout -> dense(relu) -> dropout -> dense(sigmoid): the acidemia probability."""
    import keras

    x = keras.layers.Dropout(net.dropout)(x)
    x = keras.layers.Dense(net.dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(net.dropout)(x)
    return keras.layers.Dense(1, activation="sigmoid", name="distress")(x)


def compiled(inp: Any, out: Any, learning_rate: float, name: str) -> Any:
    """``keras.Model(inp, out)`` compiled for the binary label: Adam, cross-entropy, AUC."""
    import keras

    model = keras.Model(inp, out, name=name)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model


def build_model(seq_len: int, net: TrainCtg, name: str = "ctg_lstm") -> Any:
    """Conv1D front-end -> LSTM -> dense -> dense(sigmoid), compiled.

    Parameters
    ----------
    seq_len : int
        Input time steps (:func:`window_steps`).
    net : TrainCtg
        The architecture (``conv_*``, ``units``, ``lstm_readout``, ``dense_units``,
        ``dropout``) and ``learning_rate``.
    name : str
        Model name.
    """
    import keras

    inp = keras.Input(shape=(seq_len, N_CHANNELS), name="ctg")
    out = classifier_head(encoder(inp, net), net)
    return compiled(inp, out, net.learning_rate, name)


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
    signal: CtgSignal,
    pre: PreprocessCtg,
    norm: Normalisation,
    alert_threshold: float | None,
    threshold_rule: str,
) -> None:
    """Write ``model.keras`` and ``preprocess.json`` into ``folder`` (an atomic_dir tmp).

    The JSON holds every key :class:`CtgPredictor` reads: the ``ctg_signal`` and
    ``preprocess_ctg`` settings, the normalisation, the input steps, the alert threshold and how
    it was chosen.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    canonical_keras_archive(folder / MODEL_FILE)  # same model, same bytes (dvc.lock)
    config = {
        "ctg_signal": asdict(signal),
        "preprocess_ctg": asdict(pre),
        "normalisation": asdict(norm),
        "alert_threshold": alert_threshold,
        "threshold_rule": threshold_rule,
        "seq_len": int(model.input_shape[1]),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


class CtgPredictor(RawInputPredictor):
    """The network served: raw input (:mod:`stages.ctg.models.raw_input`) -> the preprocessing
    of ``preprocess_ctg`` -> the last ``seq_len`` steps -> probability of pH < threshold."""

    def __init__(self, model: Any, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.model = model
        self.norm = Normalisation(**config["normalisation"])
        self.seq_len = int(config["seq_len"])

    @property
    def analysed_seconds(self) -> float:
        """Length (s) of the end of a record the network sees: ``seq_len`` steps."""
        return self.seq_len / self.preprocess.fs_out_hz

    def prepare(self, model_input: Any) -> np.ndarray:
        """Validate raw input and return the network input ``(n, T, 3)``."""
        fhr_rows, uc_rows = [], []
        for i, (fhr, uc, fs) in enumerate(self.raw_records(model_input)):
            f_out, u_out = preprocess_signals(fhr, uc, fs, self.preprocess)
            if np.isnan(f_out).all():
                raise ValueError(f"row {i}: no valid FHR sample in the analysed window")
            fhr_rows.append(f_out)
            uc_rows.append(u_out)
        x = model_inputs(np.stack(fhr_rows), np.stack(uc_rows), self.norm)
        # The network sees the last seq_len steps (train_ctg.window_minutes), as in training.
        return x[:, x.shape[1] - self.seq_len :]

    def probabilities(self, model_input: Any) -> np.ndarray:
        """The network on the prepared input, one probability per record."""
        return predict_proba(self.model, self.prepare(model_input))


def load_predictor(artifacts: Mapping[str, str]) -> CtgPredictor:
    """The pyfunc loader: ``artifacts["model_dir"]`` holds model.keras and preprocess.json."""
    import keras

    folder = Path(artifacts["model_dir"])
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
    return CtgPredictor(model, config)
