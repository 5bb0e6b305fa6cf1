"""Training the CTG network: the inner validation split, one fit with early stopping, the
cross-validation that gives every record an out-of-fold probability, and the learning curves.

Each fit trains on its records with class weights for the ~1:4 imbalance and stops early on an
inner validation split of them (record-level, stratified, seeded), keeping the best epoch's
weights. :func:`cross_validate` takes the fit as a function, so a research variant
(``experiments/``) cross-validates its own fit on the same folds with the same bookkeeping.

Keras and TensorFlow are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.ml.metrics import auc
from stages.common.ml.training import class_weights, epoch_timer, seed_everything
from stages.ctg.models.network import (
    build_model,
    model_inputs,
    normalisation,
    predict_proba,
    window_steps,
)
from stages.ctg.models.settings import TrainCtg
from stages.ctg.paths import FOLDS_CSV, RECORDS_CSV, SEQUENCES_NPZ
from stages.ctg.signal.settings import PreprocessCtg

log = logging.getLogger(__name__)

# (trained model, per-epoch curves ``epoch, loss, val_loss, val_auc``, wall s of each epoch)
FitResult = tuple[Any, pd.DataFrame, list[float]]
# fit(rows, seed) -> FitResult: one model trained on the rows (boolean mask) of the caller's data
Fit = Callable[[np.ndarray, int], FitResult]


def load_inputs(root: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``preprocess_ctg``'s sequences aligned with records.csv and folds.csv: ``(fhr_bpm, uc,
    table)``, ``table`` holding ``record, label, ph, fold`` (read by ``train_ctg`` and the
    experiments)."""
    with np.load(root / SEQUENCES_NPZ, allow_pickle=False) as npz:
        names = [str(r) for r in npz["records"]]
        fhr, uc = npz["fhr_bpm"], npz["uc"]
    records = pd.read_csv(root / RECORDS_CSV, dtype={"record": str})
    folds = pd.read_csv(root / FOLDS_CSV, dtype={"record": str})[["record", "fold"]]
    table = records[["record", "label", "ph"]].merge(folds, on="record", how="inner")
    pos = {n: i for i, n in enumerate(names)}
    missing = [r for r in table["record"] if r not in pos]
    if missing:
        raise ValueError(f"records in folds.csv without a sequence: {missing[:5]}")
    idx = np.array([pos[r] for r in table["record"]], dtype=int)
    return fhr[idx], uc[idx], table


def network_inputs(
    fhr_bpm: np.ndarray, uc: np.ndarray, net: TrainCtg, pre: PreprocessCtg
) -> np.ndarray:
    """Preprocessed sequences -> the network's input: normalised, the last ``window_minutes``."""
    n_steps = window_steps(net.window_minutes, pre)
    return model_inputs(fhr_bpm, uc, normalisation(net))[:, -n_steps:]


def inner_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Record-level stratified split of indices into (train, validation), seeded.

    Each class contributes ``round(val_fraction * n_class)`` records (at least one when the
    class has two or more), so tiny data sets still get both classes in validation.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(int)
    val: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = int(round(val_fraction * idx.size))
        if idx.size >= 2:
            n_val = min(max(n_val, 1), idx.size - 1)
        else:
            n_val = 0
        val.append(idx[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=int)
    train_idx = np.setdiff1d(np.arange(labels.size), val_idx)
    return train_idx, val_idx


def early_stopping(monitor: str, patience: int, key: Callable[[str], str] = str) -> Any:
    """Keras early stopping on ``monitor`` (maximised for an AUC, else minimised), best epoch's
    weights restored; ``key`` maps the metric name to the model's history key."""
    import keras

    return keras.callbacks.EarlyStopping(
        monitor=key(monitor),
        mode="max" if monitor.endswith("auc") else "min",
        patience=patience,
        restore_best_weights=True,
    )


def history_curves(
    history: Mapping[str, list[float]], val_auc_key: str = "val_auc"
) -> pd.DataFrame:
    """A Keras history as ``epoch, loss, val_loss, val_auc`` (NaN without a validation split)."""
    n = len(history["loss"])
    return pd.DataFrame(
        {
            "epoch": np.arange(1, n + 1),
            "loss": history["loss"],
            "val_loss": history.get("val_loss", [np.nan] * n),
            "val_auc": history.get(val_auc_key, [np.nan] * n),
        }
    )


def fit_network(
    x: np.ndarray, y: np.ndarray, seed: int, net: TrainCtg, name: str = "ctg_lstm"
) -> FitResult:
    """Train one network with early stopping on an inner validation split.

    Parameters
    ----------
    x, y : arrays, shapes (n, T, 3) and (n,)
        Network inputs (:func:`network_inputs`) and labels.
    seed : int
        Seeds the weights, the shuffling and the inner split.
    net : TrainCtg
        Architecture and training settings.
    name : str
        Model name.

    Returns
    -------
    (model, curves, epoch_s)
        The model with the best validation weights restored, its per-epoch curves and the wall
        time of each epoch in seconds.
    """
    seed_everything(seed)
    tr, va = inner_split(y, net.val_fraction, seed)
    model = build_model(x.shape[1], net, name=name)
    timer, epoch_s = epoch_timer()
    stop = [early_stopping(net.monitor, net.patience)] if va.size else []
    hist = model.fit(
        x=x[tr],
        y=y[tr],
        batch_size=net.batch_size,
        class_weight=class_weights(y[tr], 2),
        shuffle=True,
        validation_data=(x[va], y[va]) if va.size else None,
        epochs=net.epochs,
        callbacks=[timer, *stop],
        verbose=0,
    )
    return model, history_curves(hist.history), list(epoch_s)


def network_fit(x: np.ndarray, y: np.ndarray, net: TrainCtg) -> Fit:
    """:func:`fit_network` on rows of ``x``, ``y``: the product's :data:`Fit`."""

    def fit(rows: np.ndarray, seed: int) -> FitResult:
        return fit_network(x[rows], y[rows], seed, net)

    return fit


def cross_validate(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, fit: Fit, seed: int
) -> tuple[np.ndarray, list[dict[str, float]], pd.DataFrame]:
    """Out-of-fold probabilities, per-fold summaries and learning curves.

    For each fold ``k`` (in order) ``fit(rows, seed + k)`` trains on the rows of the other folds
    and fold ``k`` is scored: every record's probability comes from a model that never saw it.

    Returns
    -------
    (oof, per_fold, curves)
        Probabilities aligned with ``y``; per fold ``fold, auc, epochs, fold_s, epoch_s``
        (seconds: wall time); the folds' curves with a ``fold`` column.
    """
    oof = np.full(y.size, np.nan)
    per_fold: list[dict[str, float]] = []
    curves = []
    for k in sorted(np.unique(folds)):
        test = folds == k
        t0 = time.perf_counter()
        model, c, epoch_s = fit(~test, seed + int(k))
        oof[test] = predict_proba(model, x[test])
        fold_s = time.perf_counter() - t0
        per_fold.append(
            {
                "fold": int(k),
                "auc": auc(y[test], oof[test]),
                "epochs": len(epoch_s),
                "fold_s": fold_s,
                "epoch_s": float(np.mean(epoch_s)) if epoch_s else float("nan"),
            }
        )
        curves.append(c.assign(fold=str(int(k))))
        log.info(
            "fold %s: AUC %.3f, %d epochs, %.1f s", k, per_fold[-1]["auc"], len(epoch_s), fold_s
        )
    return oof, per_fold, pd.concat(curves, ignore_index=True)


def learning_curve_figure(curves: pd.DataFrame) -> Any:
    """Validation loss and AUC per epoch, one line per fold (and the final fit)."""
    from stages.common.ml.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for fold, c in curves.groupby("fold"):
        axes[0].plot(c["epoch"], c["val_loss"], label=f"fold {fold}")
        axes[1].plot(c["epoch"], c["val_auc"], label=f"fold {fold}")
    axes[0].set(xlabel="epoch", ylabel="validation loss")
    axes[1].set(xlabel="epoch", ylabel="validation AUC")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig
