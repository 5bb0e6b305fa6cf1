"""Stage ``train_ctg``: cross-validated Conv1D+LSTM on the preprocessed CTG sequences.

For each fold of ``folds.csv`` a network is trained on the other folds, with early stopping on an
inner validation split (record-level, stratified, seeded) and class weights for the ~1:4
imbalance; its predictions on the held-out fold are the out-of-fold (OOF) probabilities that
every reported AUC comes from. Optionally (``n_members``, ``crop_minutes``, ``tta_crops``) each
fold trains several seeded networks, on random crops of the window redrawn every epoch, and
scores a record by averaging them over fixed crops; the averaging is part of the saved model, so
the out-of-fold predictions and the served model are the same computation. Two variants, off by
default: a second output regressing the pH during training (``ph_loss_weight``,
:mod:`stages.ctg.models.multitask`) and masked-FHR pretraining of the encoder on each fit's own
records (``pretrain_epochs``, :mod:`stages.ctg.models.pretrain`). A final model trained the same way
on all records is saved in ``data/models/ctg``; the run (params, metrics, learning curves,
out-of-fold predictions) is logged to MLflow. ``train_families_ctg`` registers it as the ``lstm``
family of ``ctg-distress`` beside the feature families and decides the promotion of all of them in
one place, the baseline first.

The alert threshold stored with the model is Youden's J on the OOF probabilities.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import io
from stages.common.ml.metrics import auc, youden_threshold
from stages.common.ml.training import class_weights, epoch_timer, seed_everything
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.ctg.models import crops as ctg_crops
from stages.ctg.models import multitask as ctg_multitask
from stages.ctg.models import network as ctg_model
from stages.ctg.models import pretrain as ctg_pretrain
from stages.ctg.paths import (
    CTG_MODEL_DIR,
    FOLDS_CSV,
    LEARNING_CURVES_CSV,
    OOF_PREDICTIONS_CSV,
    RECORDS_CSV,
    SEQUENCES_NPZ,
    TRAIN_CTG_REPORT,
)

log = logging.getLogger(__name__)


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


class _RandomCropBatches:
    """Training batches of fresh random crops every epoch, as a Keras ``PyDataset`` built
    lazily (keras imported inside). Class weights travel as sample weights."""

    @staticmethod
    def make(
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        batch_size: int,
        crop_len: int,
        rng: np.random.Generator,
    ) -> Any:
        import keras

        class Batches(keras.utils.PyDataset):
            def __init__(self) -> None:
                super().__init__(workers=1, use_multiprocessing=False)
                self.on_epoch_end()

            def __len__(self) -> int:
                return int(np.ceil(len(x) / batch_size))

            def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                idx = self._order[i * batch_size : (i + 1) * batch_size]
                return self._x[idx], y[idx].astype(np.float32), weights[idx].astype(np.float32)

            def on_epoch_end(self) -> None:
                self._order = rng.permutation(len(x))
                self._x = ctg_crops.random_crops(x, crop_len, rng)

        return Batches()


def fit_network(
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    seed: int,
    crop_len: int = 0,
    name: str = "ctg_lstm",
    ph: np.ndarray | None = None,
    fs_hz: float | None = None,
) -> tuple[Any, pd.DataFrame, list[float]]:
    """Train one network with early stopping on an inner validation split.

    Parameters
    ----------
    x, y : arrays, shapes (n, T, 3) and (n,)
    params : mapping
        ``train_ctg`` section.
    seed : int
        Seeds the weights, the inner split, the crops and the pretraining spans.
    crop_len : int
        0 = train on the whole window; otherwise on random crops of ``crop_len`` steps drawn
        afresh every epoch (augmentation), validated on the ``tta_crops`` fixed crops of each
        validation record.
    name : str
        Model name (unique per member of an average).
    ph : array, shape (n,), optional
        Umbilical-artery pH of the records; required when ``ph_loss_weight`` > 0 (a second
        output regresses it during training, :mod:`stages.ctg.models.multitask`).
    fs_hz : float, optional
        Sampling rate of ``x`` (``preprocess_ctg.fs_out_hz``); required when
        ``pretrain_epochs`` > 0 (masked-FHR pretraining of the encoder on ``x``, no labels,
        :mod:`stages.ctg.models.pretrain`).

    Returns
    -------
    (model, curves, epoch_s)
        The model (input ``crop_len`` steps when cropping, else T; one output, the acidemia
        probability) with the best validation weights restored, per-epoch
        ``loss, val_loss, val_auc`` and the wall time of each classifier epoch in seconds.
    """
    import keras

    seed_everything(seed)
    tr, va = inner_split(y, float(params["val_fraction"]), seed)
    ph_weight = float(params.get("ph_loss_weight", 0.0))
    ph_z = ctg_multitask.standardised_ph(ph, tr, crop_len) if ph_weight > 0 else None
    net = ctg_model.build_model(crop_len or x.shape[1], params, name=name)
    if int(params.get("pretrain_epochs", 0)) > 0:
        encoder, _ = ctg_pretrain.pretrain_encoder(x, params, seed, fs_hz, f"{name}_encoder")
        ctg_pretrain.transfer_weights(encoder, net)
    # The two-output model trains net's layers; net (one output) is what is returned.
    trainer = net
    if ph_z is not None:
        trainer = ctg_multitask.with_ph_head(net, ph_weight, float(params["learning_rate"]))
    key = ctg_multitask.metric_key if ph_z is not None else str
    monitor = str(params.get("monitor", "val_loss"))
    timer, epoch_s = epoch_timer()
    callbacks = [timer]
    if va.size:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=key(monitor),
                mode="max" if monitor.endswith("auc") else "min",
                patience=int(params["patience"]),
                restore_best_weights=True,
            )
        )
    weights = class_weights(y[tr], 2)
    if crop_len:
        offsets = ctg_crops.crop_offsets(x.shape[1], crop_len, int(params.get("tta_crops", 1)))
        validation = (
            (ctg_crops.fixed_crops(x[va], crop_len, offsets), np.tile(y[va], len(offsets)))
            if va.size
            else None
        )
        w = np.array([weights[int(v)] for v in y[tr]])
        batches = _RandomCropBatches.make(
            x[tr], y[tr], w, int(params["batch_size"]), crop_len, np.random.default_rng(seed)
        )
        fit_data: dict[str, Any] = {"x": batches}
    elif ph_z is not None:
        # Keras 3 takes no class_weight with two outputs: class weights as per-sample weights
        # of the classification output only.
        w = np.array([weights[int(v)] for v in y[tr]], dtype=np.float32)
        validation = (x[va], [y[va], ph_z[va]]) if va.size else None
        fit_data = {
            "x": x[tr],
            "y": [y[tr], ph_z[tr]],
            "sample_weight": [w, np.ones_like(w)],
            "batch_size": int(params["batch_size"]),
            "shuffle": True,
        }
    else:
        validation = (x[va], y[va]) if va.size else None
        fit_data = {
            "x": x[tr],
            "y": y[tr],
            "batch_size": int(params["batch_size"]),
            "class_weight": weights,
            "shuffle": True,
        }
    hist = trainer.fit(
        **fit_data,
        validation_data=validation,
        epochs=int(params["epochs"]),
        callbacks=callbacks,
        verbose=0,
    )
    h = hist.history
    n = len(h["loss"])
    curves = pd.DataFrame(
        {
            "epoch": np.arange(1, n + 1),
            "loss": h["loss"],
            "val_loss": h.get("val_loss", [np.nan] * n),
            "val_auc": h.get(key("val_auc"), [np.nan] * n),
        }
    )
    return net, curves, list(epoch_s)


def fit_average(
    x: np.ndarray,
    y: np.ndarray,
    params: Mapping[str, Any],
    seed: int,
    crop_len: int = 0,
    ph: np.ndarray | None = None,
    fs_hz: float | None = None,
) -> tuple[Any, pd.DataFrame, list[float]]:
    """Train ``n_members`` networks (seeds ``seed + 1000 j``) and average them over crops.

    Each member has its own initial weights, inner validation split and crops. The returned
    model takes the whole window and averages every member over the ``tta_crops`` fixed crops
    (``ctg_model.averaged_model``): the out-of-fold predictions and the served model are the
    same computation. ``ph`` and ``fs_hz``: as in ``fit_network`` (each member pretrains its
    own encoder, with its own seed).

    Returns
    -------
    (model, curves, epoch_s)
        The averaged model, the members' learning curves (column ``member``) and the wall time
        of every epoch of every member in seconds.
    """
    members, curves, epoch_s = [], [], []
    for j in range(max(int(params.get("n_members", 1)), 1)):
        net, c, t = fit_network(x, y, params, seed + 1000 * j, crop_len, f"ctg_lstm_{j}", ph, fs_hz)
        members.append(net)
        curves.append(c.assign(member=j))
        epoch_s += t
    offsets = (
        ctg_crops.crop_offsets(x.shape[1], crop_len, int(params.get("tta_crops", 1)))
        if crop_len
        else None
    )
    model = ctg_model.averaged_model(members, x.shape[1], crop_len, offsets)
    return model, pd.concat(curves, ignore_index=True), epoch_s


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    params: Mapping[str, Any],
    crop_len: int = 0,
    ph: np.ndarray | None = None,
    fs_hz: float | None = None,
) -> tuple[np.ndarray, list[dict[str, float]], pd.DataFrame]:
    """Out-of-fold probabilities, per-fold summaries and learning curves.

    ``crop_len`` (``ctg_model.crop_steps``): 0 = train on the whole window, else on random
    crops of that many steps, scored by averaging over fixed crops. ``ph`` (aligned with
    ``y``) and ``fs_hz``: as in ``fit_network``; each fold's fits see only the other folds.
    """
    seed = int(params["seed"])
    oof = np.full(y.size, np.nan)
    per_fold: list[dict[str, float]] = []
    curves = []
    for k in sorted(np.unique(folds)):
        test = folds == k
        t0 = time.perf_counter()
        ph_k = None if ph is None else ph[~test]
        net, c, epoch_s = fit_average(
            x[~test], y[~test], params, seed + int(k), crop_len, ph_k, fs_hz
        )
        oof[test] = ctg_model.predict_proba(net, x[test])
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


def load_inputs(root: Path) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Sequences aligned with records.csv and folds.csv: ``(fhr_bpm, uc, table)``."""
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


def learning_curve_figure(curves: pd.DataFrame) -> Any:
    from stages.common.ml.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    several = "member" in curves.columns and curves["member"].nunique() > 1
    keys = ["fold", "member"] if several else ["fold"]
    for key, c in curves.groupby(keys):
        label = "fold " + ".".join(str(k) for k in key)
        axes[0].plot(c["epoch"], c["val_loss"], label=label)
        axes[1].plot(c["epoch"], c["val_auc"], label=label)
    axes[0].set(xlabel="epoch", ylabel="validation loss")
    axes[1].set(xlabel="epoch", ylabel="validation AUC")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params("train_ctg")
    pre = load_params("preprocess_ctg")
    root = project_root()
    fhr, uc, table = load_inputs(root)
    norm = ctg_model.normalisation(params)
    n_steps = ctg_model.window_steps(params, pre)
    x = ctg_model.model_inputs(fhr, uc, norm)[:, -n_steps:]
    y = table["label"].to_numpy(int)
    crop_len = ctg_crops.crop_steps(params, pre)
    ph = table["ph"].to_numpy(float)  # the pH head's target (ph_loss_weight)
    fs_hz = float(pre["fs_out_hz"])  # pretraining spans: seconds -> steps
    t0 = time.perf_counter()
    oof, per_fold, curves = cross_validate(
        x, y, table["fold"].to_numpy(int), params, crop_len, ph, fs_hz
    )
    final, final_curves, final_epoch_s = fit_average(
        x, y, params, int(params["seed"]), crop_len, ph, fs_hz
    )
    threshold = youden_threshold(y, oof)
    with io.atomic_dir(root / CTG_MODEL_DIR) as tmp:
        ctg_model.save_model_dir(
            tmp,
            final,
            pre,
            norm,
            threshold,
            float(params["min_input_minutes"]),
            {
                "threshold_rule": "youden on out-of-fold probabilities",
                "max_input_minutes": float(params["max_input_minutes"]),
            },
        )
    oof_df = table[["record", "fold", "label", "ph"]].assign(probability=oof)
    io.write_csv(root / OOF_PREDICTIONS_CSV, oof_df)
    all_curves = pd.concat([curves, final_curves.assign(fold="final")], ignore_index=True)
    io.write_csv(
        root / LEARNING_CURVES_CSV,
        all_curves[["fold", "member", "epoch", "loss", "val_loss", "val_auc"]],
    )
    # The tracked report holds what the model is (a pure function of deps and params); times go
    # to the untracked run report (data/runs/) and MLflow.
    report: dict[str, Any] = {
        "cv_auc": auc(y, oof),
        "n_records": int(y.size),
        "n_pos": int(y.sum()),
        "alert_threshold": threshold,
        "final_epochs": len(final_epoch_s),
        "fold": {
            str(f["fold"]): {k: v for k, v in f.items() if k in ("auc", "epochs")} for f in per_fold
        },
    }
    timings = {
        "mean_epoch_s": float(np.mean([f["epoch_s"] for f in per_fold])),
        "mean_fold_s": float(np.mean([f["fold_s"] for f in per_fold])),
        "total_s": time.perf_counter() - t0,
        "fold_s": {str(f["fold"]): f["fold_s"] for f in per_fold},
    }
    log.info("CV AUC (pooled out-of-fold, %d records): %.4f", y.size, report["cv_auc"])
    with tracking.run(
        "ctg", "train_ctg", params={"train_ctg": params, "preprocess_ctg": pre}, stage="train_ctg"
    ):
        tracking.log_metrics(
            {"cv_auc": report["cv_auc"], **{k: timings[k] for k in ("mean_epoch_s", "mean_fold_s")}}
        )
        for f in per_fold:
            tracking.log_metrics(
                {f"fold{f['fold']}.auc": f["auc"], f"fold{f['fold']}.epochs": f["epochs"]}
            )
        for r in curves.itertuples():
            tracking.log_metrics(
                {f"fold{r.fold}.val_loss": r.val_loss, f"fold{r.fold}.val_auc": r.val_auc},
                step=int(r.epoch),
            )
        tracking.log_figure(learning_curve_figure(all_curves), "learning_curves.png")
        tracking.log_artifact(root / LEARNING_CURVES_CSV)
        tracking.log_artifact(root / OOF_PREDICTIONS_CSV)
    io.write_json(root / TRAIN_CTG_REPORT, report)
    io.write_run_report(root, "train_ctg", timings)


if __name__ == "__main__":
    main()
