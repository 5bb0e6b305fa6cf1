"""What a ``ctg-distress`` version is registered with: signature, card facts, paired evaluation.

Every family (``train_ctg``'s network, ``train_families_ctg``'s feature models) is registered with
the same signature, input example, card layout and paired evaluation: they compete on equal terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common.registry import tracking
from stages.common.registry.promotion import Evaluation, score_interval
from stages.common.registry.provenance import data_version
from stages.ctg.paths import FOLDS_CSV, RECORDS_CSV

FAMILY_TAG = "family"  # version tag: lstm | logistic | gbm | hybrid
LEGACY_OOF = "oof_predictions.csv"  # train_ctg has logged it at the root of every run
# MLflow signature spec (stages.common.registry.tracking.model_signature): raw 4 Hz samples in.
SIGNATURE: dict[str, list[tuple[str, str, bool]]] = {
    "inputs": [
        ("fhr_bpm", "array<double>", True),
        ("uc", "array<double>", True),
        ("fs_hz", "double", False),
    ],
    "outputs": [("probability", "double", True), ("alert", "boolean", True)],
}
INPUTS = [
    ("fhr_bpm", "list of float", "fetal heart rate, bpm, raw samples at fs_hz (0 = signal loss)"),
    ("uc", "list of float", "uterine contractions (tocodynamometry units), same samples"),
    ("fs_hz", "float, optional", "sampling rate in Hz (default 4)"),
]
OUTPUTS = [
    ("probability", "float", "probability of umbilical-artery acidaemia (pH < 7.15), 0-1"),
    ("alert", "bool", "probability >= the stored alert threshold (Youden's J, out-of-fold)"),
]


# What each family is, for its model card.
SUMMARIES = {
    "lstm": "Conv1D + LSTM on the last minutes of intrapartum CTG (FHR and UC).",
    "logistic": "Logistic regression (L2, class-balanced) on ~20 FIGO-style features (baseline, "
    "variability, accelerations, decelerations, contractions) of the last minutes of the raw "
    "FHR and UC, cleaned as for the network.",
    "gbm": "Gradient-boosted trees (scikit-learn histogram boosting) on the same FIGO-style "
    "features as the logistic family.",
    "hybrid": "Stacking: a logistic regression on the Conv1D + LSTM network's logit and the "
    "FIGO-style features, fitted on the network's out-of-fold predictions.",
}


def example_input(n_min: float = 12.0, fs_hz: float = 4.0) -> pd.DataFrame:
    """A one-row raw input (flat 140 bpm, resting UC) for the MLflow input example."""
    n = int(n_min * 60 * fs_hz)
    return pd.DataFrame({"fhr_bpm": [[140.0] * n], "uc": [[10.0] * n], "fs_hz": [fs_hz]})


def oof_items(oof: pd.DataFrame) -> pd.DataFrame:
    """``record, label, probability`` (train_ctg's oof_predictions.csv) as promotion items."""
    return pd.DataFrame(
        {"item": oof["record"].astype(str), "y": oof["label"].astype(int),
         "pred": oof["probability"].astype(float)}
    )  # fmt: skip


def oof_evaluation(oof: pd.DataFrame, metric: str, seed: int) -> Evaluation:
    """The out-of-fold predictions as a paired evaluation: each record's probability comes from
    a fold model that did not train on it, and the salted hashed folds keep it so as records are
    added (DeLong on the common records). A champion registered before per-item evaluations
    were stored is read from the ``oof_predictions.csv`` its run logged."""
    return Evaluation(oof_items(oof), metric, method="delong", score="auc", seed=seed,
                      legacy_artifact=LEGACY_OOF, legacy_items=oof_items)  # fmt: skip


def card_facts(
    report: Mapping[str, Any],
    auc_ci: tuple[float, float],
    data_version: str,
    family: str = "lstm",
) -> dict[str, Any]:
    """The model card's facts from a family's report (``cv_auc``, ``n_records``, ``n_pos``,
    ``alert_threshold``; :mod:`stages.common.registry.model_card`)."""
    n, n_pos = int(report["n_records"]), int(report["n_pos"])
    return {
        "name": "ctg-distress",
        "summary": f"Family `{family}`: {SUMMARIES[family]}",
        "intended_use": "Flag intrapartum CTG recordings at risk of fetal acidaemia for review.",
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "data_version": data_version,
        "n_train": f"{n} records (CTU-UHB)",
        "class_balance": f"{n_pos} acidaemic / {n - n_pos} not ({n_pos / max(n, 1):.1%})",
        "evaluation": "Record-level cross-validation over salted hashed folds: every figure is "
        "out-of-fold. Promotion: DeLong's paired test on the records champion and challenger "
        "share; the 95 % interval of the AUC below is a bootstrap over records.",
        "metrics": {
            "cv_auc": (float(report["cv_auc"]), *auc_ci),
            "alert_threshold": float(report["alert_threshold"]),
        },
        "failure_cases": [
            "long signal loss (more than the preprocessing gap limit) in the analysed window",
            "recordings shorter than min_input_minutes are refused, not scored",
            "maternal heart rate recorded as FHR is not detected",
            "one centre (CTU-UHB, Brno): other populations and monitors are untested",
        ],
    }


def register_family(
    root: Path,
    model_dir: Path,
    loader: str,
    family: str,
    report: Mapping[str, Any],
    promotion: Mapping[str, Any],
    oof: pd.DataFrame,
    seed: int,
    key: str,
) -> dict[str, Any]:
    """Register one family's model folder as a ``ctg-distress`` version in the active run and
    decide its promotion; the Decision as a dict.

    Every family gets the same tags (``family``, the metric and its interval, data version,
    evaluation data hash), signature, input example, model card and paired evaluation of its
    out-of-fold predictions ``oof`` (``record, label, probability``). ``promotion`` holds
    ``registered_name``, ``promote_metric`` and ``promote_margin``; ``key`` is the idempotency key.
    """
    metric = str(promotion["promote_metric"])
    version = data_version(root, ["ctg", "ctu-uhb"], [root / RECORDS_CSV, root / FOLDS_CSV])
    evaluation = oof_evaluation(oof, metric, seed)
    _, low, high = score_interval(evaluation)
    decision = tracking.register_and_promote(
        model_dir,
        loader,
        str(promotion["registered_name"]),
        {
            metric: report[metric],
            "metric_interval": f"[{low:.4f}, {high:.4f}]",
            "data_version": version,
            "eval_data_hash": tracking.data_hash([root / FOLDS_CSV, root / RECORDS_CSV]),
            "n_records": report["n_records"],
            FAMILY_TAG: family,
        },
        key,
        metric,
        float(promotion["promote_margin"]),
        evaluation=evaluation,
        card_facts=card_facts(report, (low, high), version, family),
        input_example=example_input(),
        signature=SIGNATURE,
    )
    return decision.to_dict()
