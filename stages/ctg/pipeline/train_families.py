"""Stage ``train_families_ctg``: the feature families of ``ctg-distress`` beside the network.

Three families (:mod:`stages.ctg.models.families`): the FIGO-feature logistic regression (the
baseline every other family is compared with; fitted here, once), gradient-boosted trees on the
same features, and a hybrid stacking the network's out-of-fold logit with the features. Each is
scored out of fold on ``split_ctg``'s salted hashed folds, the folds the network was scored on,
then refitted on every record and saved as a model folder that takes the network's input (raw
4 Hz FHR and UC; the features are computed from them by the code ``featurize_ctg`` runs;
:mod:`stages.ctg.models.family_predictor`), with its alert threshold (Youden's J on its
out-of-fold probabilities).

Outputs: one model folder per family, their out-of-fold predictions (``evaluate_ctg`` evaluates
every family from them and the network's), and a short report (each family's out-of-fold AUC and
threshold). The run is logged to MLflow; registration is the registry stage's, after
``evaluate_ctg``. Timings go to ``data/runs/train_families_ctg.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import io
from stages.common.ml import metrics as M
from stages.common.params import project_root
from stages.common.registry import tracking
from stages.common.settings import load_settings
from stages.ctg.features.figo import FeaturizeCtg
from stages.ctg.models import families
from stages.ctg.models.family_predictor import EXPORTS, save_family_dir
from stages.ctg.models.settings import TrainFamiliesCtg
from stages.ctg.paths import (
    CTG_FAMILIES_DIR,
    CTG_MODEL_DIR,
    FAMILIES_OOF_CSV,
    FEATURES_CSV,
    FOLDS_CSV,
    OOF_PREDICTIONS_CSV,
    RECORDS_CSV,
    TRAIN_FAMILIES_CTG_REPORT,
)
from stages.ctg.signal.settings import CtgSignal, PreprocessCtg

log = logging.getLogger(__name__)

STAGE = "train_families_ctg"
THRESHOLD_RULE = "youden on out-of-fold probabilities (optimistic)"
OOF_COLUMNS = ["record", "fold", "label", "ph"]  # + one probability column per family


def load_table(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """``record, label, ph, fold, lstm`` (the network's OOF probability) and the features, one
    row per record of ``folds.csv``, in train_ctg's order; the informative feature columns."""
    records = pd.read_csv(root / RECORDS_CSV, dtype={"record": str})[["record", "label", "ph"]]
    folds = pd.read_csv(root / FOLDS_CSV, dtype={"record": str})[["record", "fold"]]
    lstm = pd.read_csv(root / OOF_PREDICTIONS_CSV, dtype={"record": str})
    lstm = lstm[["record", "fold", "probability"]].rename(
        columns={"fold": "lstm_fold", "probability": "lstm"}
    )
    feats = pd.read_csv(root / FEATURES_CSV, dtype={"record": str})
    columns = families.informative_columns(feats.drop(columns="record"))
    table = (
        records.merge(folds, on="record", how="inner")
        .merge(lstm, on="record", how="left")
        .merge(feats[["record", *columns]], on="record", how="left", indicator=True)
    )
    stale = table["lstm"].isna() | (table["lstm_fold"] != table["fold"])
    if stale.any() or (table.pop("_merge") != "both").any():
        raise SystemExit(
            f"{STAGE} failed: train_ctg's out-of-fold predictions or the features do not match "
            f"folds.csv (e.g. {table.loc[stale, 'record'].head(3).tolist()}): run dvc repro"
        )
    return table.drop(columns="lstm_fold"), columns


def save_models(
    folder: Path,
    lstm_dir: Path,
    config: Mapping[str, Any],
    y: np.ndarray,
    inputs: Mapping[str, np.ndarray],
    make: Mapping[str, Callable[[], Any]],
    thresholds: Mapping[str, float],
) -> None:
    """Fit every family on all records and write its model folder into ``folder`` (the hybrid
    with a copy of the network's folder ``lstm_dir``)."""
    for name in families.FAMILIES:
        scorer, trees = EXPORTS[name](families.fit_final(make[name], inputs[name], y))
        save_family_dir(
            folder / name,
            {**config, "family": name, "scorer": scorer, "alert_threshold": thresholds[name]},
            trees or None,
            lstm_dir if name == "hybrid" else None,
        )


def families_report(
    y: np.ndarray, oof: Mapping[str, np.ndarray], thresholds: Mapping[str, float], n_features: int
) -> dict[str, Any]:
    """The stage's metrics: each family's out-of-fold AUC and alert threshold (the evaluation
    with intervals and paired comparisons is ``evaluate_ctg``'s)."""
    return {
        "n_records": int(y.size),
        "n_pos": int(y.sum()),
        "n_features": int(n_features),
        "threshold_rule": THRESHOLD_RULE,
        "families": {
            name: {"cv_auc": M.auc(y, prob), "alert_threshold": thresholds[name]}
            for name, prob in oof.items()
        },
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fam = load_settings(TrainFamiliesCtg, STAGE)
    signal = load_settings(CtgSignal, "ctg_signal")
    pre = load_settings(PreprocessCtg, "preprocess_ctg")
    window_min = load_settings(FeaturizeCtg, "featurize_ctg").window_min
    root, t0 = project_root(), time.perf_counter()
    table, columns = load_table(root)
    y, folds = table["label"].to_numpy(int), table["fold"].to_numpy(int)
    inputs = families.family_inputs(table[columns].to_numpy(float), table["lstm"].to_numpy(float))
    make = families.makers(fam)
    oof = families.cross_validate(inputs, y, folds, make)
    thresholds = {name: M.youden_threshold(y, prob) for name, prob in oof.items()}
    config = {
        "columns": columns, "window_min": window_min, "ctg_signal": asdict(signal),
        "preprocess_ctg": asdict(pre), "threshold_rule": THRESHOLD_RULE,
    }  # fmt: skip
    with io.atomic_dir(root / CTG_FAMILIES_DIR) as tmp:
        save_models(tmp, root / CTG_MODEL_DIR, config, y, inputs, make, thresholds)
    io.write_csv(root / FAMILIES_OOF_CSV, table[OOF_COLUMNS].assign(**oof))
    report = families_report(y, oof, thresholds, len(columns))
    settings = {STAGE: asdict(fam), "featurize_ctg": {"window_min": window_min}}
    with tracking.run("ctg", STAGE, params=settings, stage=STAGE):
        tracking.log_metrics({f"{n}.cv_auc": f["cv_auc"] for n, f in report["families"].items()})
        tracking.log_artifact(root / FAMILIES_OOF_CSV)
    io.write_json(root / TRAIN_FAMILIES_CTG_REPORT, report)
    io.write_run_report(root, STAGE, {"total_s": time.perf_counter() - t0})
    for name, f in report["families"].items():
        log.info("%-8s OOF AUC %.4f", name, f["cv_auc"])


if __name__ == "__main__":
    main()
