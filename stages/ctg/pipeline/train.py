"""Stage ``train_ctg``: cross-validated Conv1D+LSTM on the preprocessed CTG sequences.

For each fold of ``folds.csv`` a network is trained on the other folds
(:mod:`stages.ctg.models.training`: early stopping on an inner validation split, class weights);
its predictions on the held-out fold are the out-of-fold (OOF) probabilities that every reported
AUC comes from. A final network trained the same way on all records is saved in
``data/models/ctg`` (:mod:`stages.ctg.models.network`) with the alert threshold, Youden's J on
the OOF probabilities. The run (params, metrics, learning curves, OOF predictions) is logged to
MLflow; ``evaluate_ctg`` evaluates the network beside the other families and the registry stage
registers them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import io
from stages.common.ml.metrics import auc, youden_threshold
from stages.common.params import project_root
from stages.common.registry import tracking
from stages.common.settings import load_settings
from stages.ctg.models import network
from stages.ctg.models.settings import TrainCtg
from stages.ctg.models.training import (
    cross_validate,
    learning_curve_figure,
    load_inputs,
    network_fit,
    network_inputs,
)
from stages.ctg.paths import (
    CTG_MODEL_DIR,
    LEARNING_CURVES_CSV,
    OOF_PREDICTIONS_CSV,
    TRAIN_CTG_REPORT,
)
from stages.ctg.signal.settings import CtgSignal, PreprocessCtg

log = logging.getLogger(__name__)

STAGE = "train_ctg"
THRESHOLD_RULE = "youden on out-of-fold probabilities"
OOF_COLUMNS = ["record", "fold", "label", "ph"]  # + probability
CURVE_COLUMNS = ["fold", "epoch", "loss", "val_loss", "val_auc"]


def train_report(
    y: np.ndarray, oof: np.ndarray, per_fold: list[dict[str, float]], threshold: float,
    final_epochs: int,
) -> dict[str, Any]:  # fmt: skip
    """The tracked metrics: what the model is (a pure function of deps and params), no times."""
    return {
        "cv_auc": auc(y, oof),
        "n_records": int(y.size),
        "n_pos": int(y.sum()),
        "alert_threshold": threshold,
        "final_epochs": final_epochs,
        "fold": {str(f["fold"]): {"auc": f["auc"], "epochs": f["epochs"]} for f in per_fold},
    }


def run_timings(per_fold: list[dict[str, float]], total_s: float) -> dict[str, Any]:
    """Wall times (s) for the untracked run report: they differ from run to run."""
    return {
        "mean_epoch_s": float(np.mean([f["epoch_s"] for f in per_fold])),
        "mean_fold_s": float(np.mean([f["fold_s"] for f in per_fold])),
        "total_s": total_s,
        "fold_s": {str(f["fold"]): f["fold_s"] for f in per_fold},
    }


def log_run(
    root: Path, settings: dict[str, Any], report: dict[str, Any],
    per_fold: list[dict[str, float]], curves: pd.DataFrame,
) -> None:  # fmt: skip
    """The MLflow run: settings, CV AUC and mean times, per-fold figures, learning curves."""
    with tracking.run("ctg", STAGE, params=settings, stage=STAGE):
        tracking.log_metrics(
            {
                "cv_auc": report["cv_auc"],
                "mean_epoch_s": float(np.mean([f["epoch_s"] for f in per_fold])),
                "mean_fold_s": float(np.mean([f["fold_s"] for f in per_fold])),
            }
        )
        for f in per_fold:
            tracking.log_metrics(
                {f"fold{f['fold']}.auc": f["auc"], f"fold{f['fold']}.epochs": f["epochs"]}
            )
        for r in curves[curves["fold"] != "final"].itertuples():
            tracking.log_metrics(
                {f"fold{r.fold}.val_loss": r.val_loss, f"fold{r.fold}.val_auc": r.val_auc},
                step=int(r.epoch),
            )
        tracking.log_figure(learning_curve_figure(curves), "learning_curves.png")
        tracking.log_artifact(root / LEARNING_CURVES_CSV)
        tracking.log_artifact(root / OOF_PREDICTIONS_CSV)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    net = load_settings(TrainCtg, STAGE)
    pre = load_settings(PreprocessCtg, "preprocess_ctg")
    signal = load_settings(CtgSignal, "ctg_signal")
    root, t0 = project_root(), time.perf_counter()
    fhr, uc, table = load_inputs(root)
    x, y = network_inputs(fhr, uc, net, pre), table["label"].to_numpy(int)
    fit = network_fit(x, y, net)
    oof, per_fold, curves = cross_validate(x, y, table["fold"].to_numpy(int), fit, net.seed)
    final, final_curves, final_epoch_s = fit(np.ones(y.size, dtype=bool), net.seed)
    threshold = youden_threshold(y, oof)
    with io.atomic_dir(root / CTG_MODEL_DIR) as tmp:
        norm = network.normalisation(net)
        network.save_model_dir(tmp, final, signal, pre, norm, threshold, THRESHOLD_RULE)
    io.write_csv(root / OOF_PREDICTIONS_CSV, table[OOF_COLUMNS].assign(probability=oof))
    curves = pd.concat([curves, final_curves.assign(fold="final")], ignore_index=True)
    io.write_csv(root / LEARNING_CURVES_CSV, curves[CURVE_COLUMNS])
    report = train_report(y, oof, per_fold, threshold, len(final_epoch_s))
    log.info("CV AUC (pooled out-of-fold, %d records): %.4f", y.size, report["cv_auc"])
    settings = {STAGE: asdict(net), "preprocess_ctg": asdict(pre), "ctg_signal": asdict(signal)}
    log_run(root, settings, report, per_fold, curves)
    io.write_json(root / TRAIN_CTG_REPORT, report)
    io.write_run_report(root, STAGE, run_timings(per_fold, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
