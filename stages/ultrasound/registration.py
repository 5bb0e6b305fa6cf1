"""What an ultrasound model version is registered with: its per-item evaluation (read from its
training stage's items file), model card, signature and loader; ``register_us`` registers the
three models through :func:`stages.common.registry.registration.register`.

Per-item evaluations (what promotion pairs on; ``cluster`` is the patient or examination):

- head segmenter: each HC18 image's out-of-fold |HC error| in mm (``train_segmenter_us``'s
  ``oof.csv``; an image without an ellipse counts its whole circumference), clustered by
  examination (the ``NNN`` of ``NNN_HC`` / ``NNN_2HC``), scored by minus the mean;
- plane classifier: each validation crop's class probabilities (``val_items.csv``), by log-loss;
- autoencoder: each validation crop and its corrupted copies (``val_items.csv``), by AUROC.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.registry.promotion import Evaluation, score_interval
from stages.common.registry.registration import ModelRegistration, ModelSpec
from stages.common.settings import settings
from stages.ultrasound.paths import AUTOENCODER_DIR, FINAL_SEGMENTER, PLANE_CLASSIFIER_DIR

KINDS = ("segmenter", "plane_classifier", "autoencoder")  # registration order
PREDICTORS = "stages.ultrasound.serving.predictors"
MODELS: dict[str, tuple[Path, str]] = {  # kind -> model folder, installed loader
    "segmenter": (FINAL_SEGMENTER, f"{PREDICTORS}:load_segmenter_predictor"),
    "plane_classifier": (PLANE_CLASSIFIER_DIR, f"{PREDICTORS}:load_plane_predictor"),
    "autoencoder": (AUTOENCODER_DIR, f"{PREDICTORS}:load_autoencoder_predictor"),
}
SCORES = {"segmenter": "mean_neg", "plane_classifier": "log_loss_neg", "autoencoder": "auc"}


@settings
class RegisterUsSettings:
    """``register_us`` in params.yaml: one registration per model, one interval setting."""

    seed: int  # seed of the patient-bootstrap intervals and paired comparisons
    n_bootstrap: int  # resamples of those
    segmenter: ModelRegistration
    plane_classifier: ModelRegistration
    autoencoder: ModelRegistration


def exam_of(image: str) -> str:
    """The examination of an HC18 image name (``"012_2HC"`` -> ``"012"``)."""
    found = re.match(r"\d+(?=_)", image)
    return found.group(0) if found else image


def segmenter_items(oof: pd.DataFrame) -> pd.DataFrame:
    """``oof.csv`` (``image, fold, dice, hc_mm, hc_error_mm, hc_true_mm``) as items: the
    |HC error| in mm per image, the image's whole circumference when no ellipse was found."""
    signed, truth = oof["hc_error_mm"].to_numpy(float), oof["hc_true_mm"].to_numpy(float)
    names = oof["image"].astype(str)
    return pd.DataFrame({"item": names, "cluster": [exam_of(n) for n in names], "y": truth,
                         "pred": np.where(np.isnan(signed), truth, np.abs(signed))})  # fmt: skip


def kind_evaluation(kind: str, items: pd.DataFrame, settings: RegisterUsSettings) -> Evaluation:
    """The paired evaluation of one model from its items (``item, cluster, y, pred[.i]``)."""
    items = items.assign(item=items["item"].astype(str), cluster=items["cluster"].astype(str))
    return Evaluation(items, getattr(settings, kind).promote_metric, score=SCORES[kind],
                      n_bootstrap=settings.n_bootstrap, seed=settings.seed)  # fmt: skip


# MLflow signature specs (stages.common.registry.tracking.model_signature): raw 2-D uint8 images in.
IMAGE = ("image", "array<array<long>>", True)
SIGNATURES: dict[str, dict[str, list[tuple[str, str, bool]]]] = {
    "segmenter": {
        "inputs": [IMAGE],
        "outputs": [("ok", "boolean", True), ("hc_px", "double", True),
                    ("semi_major_px", "double", True), ("semi_minor_px", "double", True)],
    },
    "plane_classifier": {
        "inputs": [IMAGE],
        "outputs": [("plane", "string", True), ("plane_probability", "double", True)],
    },
    "autoencoder": {
        "inputs": [IMAGE, ("plane", "string", True)],
        "outputs": [("anomaly_score", "double", True), ("anomalous", "boolean", True)],
    },
}  # fmt: skip
IMAGE_ROW = ("image", "2-D uint8 array", "raw grayscale ultrasound image, pixel intensities 0-255")
CARD_IO: dict[str, tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]] = {
    "segmenter": (
        [IMAGE_ROW],
        [("ok", "bool", "an ellipse was found"),
         ("hc_px", "float", "head circumference in pixels (times pixel_mm for mm)"),
         ("semi_major_px, semi_minor_px", "float", "ellipse semi-axes, pixels")],
    ),
    "plane_classifier": (
        [IMAGE_ROW],
        [("plane", "str", "trans-thalamic, trans-cerebellum or trans-ventricular"),
         ("plane_probability", "float", "probability of that plane, 0-1"),
         ("p_<plane>", "float", "probability of each plane, 0-1")],
    ),
    "autoencoder": (
        [IMAGE_ROW, ("plane", "str", "the image's brain plane (conditions the model)")],
        [("anomaly_score", "float", "distance from the training brain crops (model's score)"),
         ("anomalous", "bool", "anomaly_score above the stored threshold")],
    ),
}  # fmt: skip


# The model cards' fixed text; ``evaluation`` is formatted with the stage's report figures.
CARD_TEXT: dict[str, dict[str, Any]] = {
    "segmenter": {
        "name": "us-head-segmenter",
        "summary": "U-Net for the fetal skull on HC18; head circumference from the fitted ellipse.",
        "evaluation": "{n_folds}-fold cross-validation by examination: every figure is out-of-fold."
        " Promotion: paired bootstrap by examination of the per-image |HC error| on the images "
        "both versions scored out of fold.",
        "failure_cases": [
            "no ellipse found (counted as an error of the whole circumference)",
            "big heads (third trimester): the largest errors in mm",
            "images from other machines or with strong shadowing are untested",
        ],
    },
    "plane_classifier": {
        "name": "us-plane-classifier",
        "summary": "Small CNN classifying brain-plane head crops (FETAL_PLANES_DB).",
        "evaluation": "Validation on {n_val} crops of held-out patients (patient-disjoint hashed "
        "split); intervals: bootstrap by patient. Promotion: a paired bootstrap by patient on "
        "the validation crops champion and challenger were both scored on.",
        "failure_cases": [
            "a failed skull segmentation gives a wrong crop and an unreliable plane",
            "non-brain planes are out of scope (not a class)",
            "~25 validation crops: intervals are wide",
        ],
    },
    "autoencoder": {
        "name": "us-brain-autoencoder",
        "summary": "Plane-conditioned convolutional autoencoder of brain crops: an anomaly score "
        "for images unlike the training brains (quality, plane, possibly pathology). Not a "
        "diagnosis.",
        "evaluation": "Validation crops of held-out patients (hashed patient split) against "
        "corrupted copies (occlusion, noise, blank, inverted, seeded); interval: bootstrap by "
        "patient. Promotion: a paired bootstrap by patient on the crops and corruptions "
        "champion and challenger were both scored on.",
        "failure_cases": [
            "real pathology was never seen: a high score is not a finding",
            "easy-to-reconstruct dark or smooth non-brain crops may score low",
            "a failed skull segmentation gives an off-centre crop and a high score",
        ],
    },
}


def card_metrics(kind: str, evaluation: Evaluation, report: Mapping[str, Any]) -> dict[str, Any]:
    """The card's figures: the promotion metric with its patient-bootstrap interval (losses shown
    as positive numbers) and the report's own figures."""
    value, low, high = score_interval(evaluation)
    if kind == "segmenter":
        return {"oof_hc_error_mm_mean": (-value, -high, -low),
                "oof_hc_error_mm_median": report["oof_hc_error_mm_median"],
                "oof_dice_mean": report["oof_dice_mean"],
                "oof_n_no_ellipse": report["oof_n_no_ellipse"]}  # fmt: skip
    if kind == "plane_classifier":
        accuracy = Evaluation(evaluation.items, "val_accuracy", score="accuracy",
                              n_bootstrap=evaluation.n_bootstrap, seed=evaluation.seed)  # fmt: skip
        return {"val_accuracy": score_interval(accuracy), "val_log_loss": (-value, -high, -low),
                "best_epoch": report["best_epoch"]}  # fmt: skip
    return {"val_corruption_auroc": (value, low, high), "val_mse": report["val_mse"],
            "threshold": report["threshold"]}  # fmt: skip


def training_facts(kind: str, report: Mapping[str, Any]) -> tuple[str, str]:
    """(size with its unit, class balance) of the model card's training data."""
    if kind == "segmenter":
        return (f"{report['n_images']} HC18 images",
                "not applicable (segmentation); head sizes stratified over folds")  # fmt: skip
    if kind == "plane_classifier":
        counts = report.get("train_class_counts") or {}
        balance = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "not recorded"
        return f"{report['n_train']} head crops", balance
    return (f"{report['n_train']} brain crops",
            "no anomaly labels: trained on normal-appearing brain crops only")  # fmt: skip


def card_facts(
    kind: str, evaluation: Evaluation, report: Mapping[str, Any], data_version: str
) -> dict[str, Any]:
    """The model card's facts of an ultrasound model (:mod:`stages.common.registry.model_card`)
    from its training stage's report."""
    text = CARD_TEXT[kind]
    inputs, outputs = CARD_IO[kind]
    n_train, balance = training_facts(kind, report)
    return {
        "name": text["name"],
        "summary": text["summary"],
        "intended_use": "Research tool on fetal ultrasound images (HC18, FETAL_PLANES_DB): "
        "measurements and flags for a sonographer to check.",
        "inputs": inputs,
        "outputs": outputs,
        "data_version": data_version,
        "n_train": n_train,
        "class_balance": balance,
        "evaluation": text["evaluation"].format(**report),
        "metrics": card_metrics(kind, evaluation, report),
        "failure_cases": text["failure_cases"],
    }


@dataclass(frozen=True)
class Trained:
    """What a trainer left for registration: its items, its report and their data version."""

    items: pd.DataFrame
    report: Mapping[str, Any]
    data_version: str


def kind_spec(root: Path, kind: str, trained: Trained, settings: RegisterUsSettings) -> ModelSpec:
    """What ``register_us`` registers for one model: folder, loader, evaluation, card."""
    report, data_version = trained.report, trained.data_version
    evaluation = kind_evaluation(kind, trained.items, settings)
    folder, loader = MODELS[kind]
    figures = {k: f"{v:.6g}" for k, v in report.items() if isinstance(v, int | float)}
    return ModelSpec(
        registered_name=getattr(settings, kind).registered_name,
        model_dir=root / folder,
        loader=loader,
        family=kind,
        evaluation=evaluation,
        promote_margin=getattr(settings, kind).promote_margin,
        card=card_facts(kind, evaluation, report, data_version),
        signature=SIGNATURES[kind],
        tags={**figures, "data_version": data_version},
        stage="register_us",
    )
