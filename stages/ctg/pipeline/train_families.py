"""Stage ``train_families_ctg``: every family of ``ctg-distress``, registered in one place.

Three families compete with ``train_ctg``'s Conv1D+LSTM network for the ``champion`` alias of
``ctg-distress`` (:mod:`stages.ctg.models.families`): the FIGO-feature logistic regression (the
baseline ``evaluate_ctg`` reports, same ``evaluate_ctg.baseline_c``), gradient-boosted trees on
the same features, and a hybrid stacking the network's out-of-fold logit with the features. Each
is scored out of fold on ``split_ctg``'s salted hashed folds, the folds the network was scored
on, then refitted on every record and registered like the network: same pyfunc input (raw 4 Hz
FHR and UC; the features are computed from them by the code ``featurize_ctg`` runs), signature,
model card and paired promotion (DeLong on the records it shares with the champion, by
``promote_margin``), tagged ``family``. This stage registers and decides for all four, the network
included (``train_ctg`` trains and logs it, nothing more): one place decides. They are registered
in the order of :data:`REGISTRATION_ORDER`, each against the champion of the moment, the baseline
first: on an empty registry the baseline is the incumbent, and a family becomes champion only by
beating it (or a later champion) beyond noise on the same records.

Outputs: one model folder per family (:mod:`stages.ctg.models.family_predictor`), the out-of-fold
predictions of every family (the network's included) and the report: per family the AUC with
its 95 % interval, sensitivity and specificity at Youden's threshold on the out-of-fold
probabilities (optimistic, as ``evaluate_ctg`` says), counts, and the paired AUC difference to the
logistic baseline (DeLong). Versions and timings go to ``data/runs/train_families_ctg.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import io
from stages.common.ml import metrics as M
from stages.common.ml.paired import delong_test
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.common.registry.promotion import score_interval
from stages.common.registry.provenance import idempotency_key
from stages.ctg.models import families
from stages.ctg.models.family_predictor import EXPORTS, save_family_dir, stack_inputs
from stages.ctg.models.registration import FAMILY_TAG, oof_evaluation, register_family
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

log = logging.getLogger(__name__)

STAGE = "train_families_ctg"
LOADER = "stages.ctg.models.family_predictor:load_predictor"
THRESHOLD_RULE = "youden on out-of-fold probabilities (optimistic)"
# the train_ctg keys this stage reads: the network's input limits, served alike by every family
TRAIN_KEYS = ("min_input_minutes", "max_input_minutes")
# the baseline first: it is the incumbent every other family has to beat beyond noise
REGISTRATION_ORDER = (families.BASELINE, "lstm", *(f for f in families.FAMILIES
                                                   if f != families.BASELINE))  # fmt: skip
# family -> (model folder, pyfunc loader)
MODEL_DIRS = {"lstm": (CTG_MODEL_DIR, "stages.ctg.models.network:load_predictor")} | {
    f: (CTG_FAMILIES_DIR / f, LOADER) for f in families.FAMILIES
}
INPUTS = [FEATURES_CSV, RECORDS_CSV, FOLDS_CSV, OOF_PREDICTIONS_CSV, CTG_MODEL_DIR]


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


def makers(params: Mapping[str, Any], baseline_c: float) -> dict[str, Callable[[], Any]]:
    """family -> a factory of its unfitted model (scikit-learn)."""
    seed = int(params["seed"])
    return {
        "logistic": lambda: families.logistic_pipeline(baseline_c, seed),
        "gbm": lambda: families.gbm_classifier(params["gbm"], seed),
        "hybrid": lambda: families.logistic_pipeline(float(params["hybrid_c"]), seed),
    }


def family_inputs(table: pd.DataFrame, columns: list[str]) -> dict[str, np.ndarray]:
    """family -> its input matrix: the features, and for the hybrid the network's logit first."""
    x = table[columns].to_numpy(float)
    return {
        "logistic": x,
        "gbm": x,
        "hybrid": stack_inputs(table["lstm"].to_numpy(float), x),
    }


def cross_validate(
    table: pd.DataFrame, inputs: Mapping[str, np.ndarray], make: Mapping[str, Callable[[], Any]]
) -> dict[str, np.ndarray]:
    """family -> out-of-fold probabilities on the network's folds (the hybrid nested in them)."""
    y, folds = table["label"].to_numpy(int), table["fold"].to_numpy(int)
    oof = {
        name: families.oof_predict(make[name], inputs[name], y, folds)
        for name in families.FAMILIES
        if name != "hybrid"
    }
    oof["hybrid"] = families.hybrid_oof(make["hybrid"], inputs["hybrid"], y, folds)
    return oof


def save_models(
    folder: Path,
    root: Path,
    config: Mapping[str, Any],
    y: np.ndarray,
    inputs: Mapping[str, np.ndarray],
    make: Mapping[str, Callable[[], Any]],
    thresholds: Mapping[str, float],
) -> None:
    """Fit every family on all records and write its model folder into ``folder``."""
    for name in families.FAMILIES:
        scorer, trees = EXPORTS[name](families.fit_final(make[name], inputs[name], y))
        save_family_dir(
            folder / name,
            {**config, "family": name, "scorer": scorer, "alert_threshold": thresholds[name]},
            trees or None,
            root / CTG_MODEL_DIR if name == "hybrid" else None,
        )


def register(
    root: Path,
    name: str,
    summary: Mapping[str, Any],
    oof: pd.DataFrame,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Register family ``name`` (its model folder, :data:`MODEL_DIRS`) in its own MLflow run
    and decide its promotion against the champion of the moment; the Decision as a dict."""
    key = idempotency_key(
        [root / p for p in INPUTS], {**settings, FAMILY_TAG: name}, tracking.git_commit()
    )
    folder, loader = MODEL_DIRS[name]
    with tracking.run(
        "ctg", f"{STAGE}.{name}", params=settings, tags={FAMILY_TAG: name}, stage=STAGE
    ):
        tracking.log_metrics({k: summary[k] for k in ("cv_auc", "alert_threshold")})
        return register_family(
            root, root / folder, loader, name, summary, settings[STAGE], oof,
            int(settings[STAGE]["seed"]), key,
        )  # fmt: skip


def family_metrics(
    table: pd.DataFrame, prob: np.ndarray, baseline: np.ndarray, metric: str, seed: int
) -> dict[str, Any]:
    """One family's out-of-fold figures: AUC with its 95 % interval (the bootstrap the registry
    tags), sensitivity and specificity at Youden's threshold, counts, and the paired (DeLong)
    AUC difference to the ``baseline`` probabilities on the same records."""
    y = table["label"].to_numpy(int)
    evaluation = oof_evaluation(table.assign(probability=prob), metric, seed)
    value, low, high = score_interval(evaluation)
    threshold = M.youden_threshold(y, prob)
    at = M.binary_metrics(y, prob, threshold)
    d = delong_test(y, baseline, prob)
    return {
        metric: value,
        "auc_ci_low": low,
        "auc_ci_high": high,
        "alert_threshold": threshold,
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "n_records": int(y.size),
        "n_pos": int(y.sum()),
        f"vs_{families.BASELINE}": {
            "difference": d.difference,
            "ci_low": d.ci_low,
            "ci_high": d.ci_high,
            "p_value": d.p_value,
        },
    }


def families_report(
    summary: Mapping[str, Mapping[str, Any]], n_features: int, threshold_rule: str
) -> dict[str, Any]:
    """The stage's metrics file: every family's :func:`family_metrics` and how to read them."""
    return {
        "baseline": families.BASELINE,
        "threshold_rule": threshold_rule,
        "n_features": int(n_features),
        "families": {name: dict(s) for name, s in summary.items()},
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root, t0 = project_root(), time.perf_counter()
    params, train = load_params(STAGE), {k: load_params("train_ctg")[k] for k in TRAIN_KEYS}
    pre, window_min = load_params("preprocess_ctg"), load_params("featurize_ctg")["window_min"]
    baseline_c = float(load_params("evaluate_ctg")["baseline_c"])  # logistic = evaluate's baseline
    make = makers(params, baseline_c)
    table, columns = load_table(root)
    y, inputs = table["label"].to_numpy(int), family_inputs(table, columns)
    oof = {"lstm": table["lstm"].to_numpy(float), **cross_validate(table, inputs, make)}
    metric, seed = str(params["promote_metric"]), int(params["seed"])
    summary = {
        name: family_metrics(table, prob, oof[families.BASELINE], metric, seed)
        for name, prob in oof.items()
    }
    config = {
        "columns": columns, "window_min": float(window_min), "preprocess_ctg": dict(pre),
        "threshold_rule": THRESHOLD_RULE,
        **{k: float(train[k]) for k in ("min_input_minutes", "max_input_minutes")},
    }  # fmt: skip
    thresholds = {name: summary[name]["alert_threshold"] for name in families.FAMILIES}
    with io.atomic_dir(root / CTG_FAMILIES_DIR) as tmp:
        save_models(tmp, root, config, y, inputs, make, thresholds)
    io.write_csv(root / FAMILIES_OOF_CSV, table[["record", "fold", "label", "ph"]].assign(**oof))
    report = families_report(summary, len(columns), THRESHOLD_RULE)
    # what a version is a function of besides its inputs (its idempotency key, its run's params)
    settings = {STAGE: params, "train_ctg": train, "config": config, "baseline_c": baseline_c}
    decisions = {
        name: register(root, name, summary[name], table.assign(probability=oof[name]), settings)
        for name in REGISTRATION_ORDER
    }
    io.write_json(root / TRAIN_FAMILIES_CTG_REPORT, report)
    io.write_run_report(root, STAGE, {"total_s": time.perf_counter() - t0, "decisions": decisions})
    for name, s in summary.items():
        log.info("%-8s OOF AUC %.4f [%.4f, %.4f]", name, s[metric], s["auc_ci_low"],
                 s["auc_ci_high"])  # fmt: skip


if __name__ == "__main__":
    main()
