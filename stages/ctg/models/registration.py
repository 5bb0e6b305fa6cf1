"""What a ``ctg-distress`` version is registered with: signature, card facts, paired evaluation.

Every family (``train_ctg``'s network, ``train_families_ctg``'s feature models) is registered by
``register_ctg`` from ``evaluate_ctg``'s out-of-fold predictions, with the same signature, input
example, card layout and paired evaluation (DeLong on the records): they compete on equal terms.
The baseline (logistic) is registered first: on an empty registry it is the incumbent, and
``fetal promote`` decides the others in :data:`FAMILIES` order, each against the champion of the
moment.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.registry.promotion import Evaluation, own_score, score_interval
from stages.common.registry.registration import ModelSpec
from stages.common.settings import settings
from stages.ctg.paths import CTG_FAMILIES_DIR, CTG_MODEL_DIR

FAMILY_TAG = "family"  # version tag: lstm | logistic | gbm | hybrid
FAMILIES = ("logistic", "lstm", "gbm", "hybrid")  # registration (and decision) order
NETWORK_LOADER = "stages.ctg.models.network:load_predictor"
FAMILY_LOADER = "stages.ctg.models.family_predictor:load_predictor"


@settings
class RegisterCtgSettings:
    """``register_ctg`` in params.yaml."""

    registered_name: str  # MLflow registered model name
    promote_metric: str  # the out-of-fold record-level AUC (DeLong on common records)
    promote_margin: float  # AUC a challenger must gain over the champion
    seed: int  # seed of the AUC's bootstrap interval
    n_bootstrap: int  # resamples of that interval


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


def model_folder(family: str) -> tuple[Path, str]:
    """A family's model folder (relative to the project root) and its installed loader."""
    if family == "lstm":
        return CTG_MODEL_DIR, NETWORK_LOADER
    return CTG_FAMILIES_DIR / family, FAMILY_LOADER


def family_evaluation(oof: pd.DataFrame, family: str, settings: RegisterCtgSettings) -> Evaluation:
    """One family's out-of-fold probabilities (``evaluate_ctg``'s ``record, fold, y, <family>``)
    as a paired evaluation: each record scored by a fold model that did not train on it, the
    salted hashed folds keeping it so as records are added (DeLong on the common records)."""
    items = pd.DataFrame(
        {"item": oof["record"].astype(str), "y": oof["y"].astype(int),
         "pred": oof[family].astype(float)}
    )  # fmt: skip
    return Evaluation(items, settings.promote_metric, method="delong", score="auc",
                      n_bootstrap=settings.n_bootstrap, seed=settings.seed)  # fmt: skip


def check_figures(evaluation: Evaluation, figures: Mapping[str, Any], family: str) -> None:
    """The items must give ``evaluate_ctg.json``'s AUC and counts (one evaluation, two files)."""
    y = evaluation.items["y"].to_numpy()
    found = (own_score(evaluation), int(y.sum()), int((y == 0).sum()))
    expected = (float(figures["auc"]), int(figures["n_pos"]), int(figures["n_neg"]))
    if not np.isclose(found[0], expected[0], atol=1e-9) or found[1:] != expected[1:]:
        raise ValueError(
            f"family {family}: oof_predictions.csv gives AUC {found[0]:.6f}, {found[1]} positive, "
            f"{found[2]} negative records; evaluate_ctg.json says {expected[0]:.6f}, "
            f"{expected[1]}, {expected[2]}"
        )


def card_facts(
    figures: Mapping[str, Any], auc: tuple[float, float, float], data_version: str, family: str
) -> dict[str, Any]:
    """The model card's facts from ``evaluate_ctg.json``'s figures of a family (``n_pos``,
    ``n_neg``, ``threshold``, ``sensitivity``, ``specificity``) and the AUC with its interval
    (:mod:`stages.common.registry.model_card`)."""
    n_pos, n = int(figures["n_pos"]), int(figures["n_pos"]) + int(figures["n_neg"])
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
            "cv_auc": auc,
            "alert_threshold": float(figures["threshold"]),
            "sensitivity": float(figures["sensitivity"]),
            "specificity": float(figures["specificity"]),
        },
        "failure_cases": [
            "long signal loss (more than the preprocessing gap limit) in the analysed window",
            "recordings shorter than min_input_minutes are refused, not scored",
            "maternal heart rate recorded as FHR is not detected",
            "one centre (CTU-UHB, Brno): other populations and monitors are untested",
        ],
    }


def family_spec(
    root: Path,
    family: str,
    oof: pd.DataFrame,
    figures: Mapping[str, Any],
    settings: RegisterCtgSettings,
    data_version: str,
) -> ModelSpec:
    """What ``register_ctg`` registers for one family: its folder, loader, evaluation, card."""
    evaluation = family_evaluation(oof, family, settings)
    check_figures(evaluation, figures, family)
    folder, loader = model_folder(family)
    auc = score_interval(evaluation)
    card = card_facts(figures, auc, data_version, family)
    tags = {"data_version": data_version, "n_records": len(oof),
            "alert_threshold": float(figures["threshold"])}  # fmt: skip
    # one model of the shared name, margin and signature: the families compete on equal terms
    return ModelSpec(settings.registered_name, root / folder, loader, family, evaluation,
                     settings.promote_margin, card, SIGNATURE, example_input(), tags,
                     "register_ctg")  # fmt: skip
