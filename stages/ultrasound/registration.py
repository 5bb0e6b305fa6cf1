"""What an ultrasound model version is registered with: metric tags, idempotency key, signature,
model card facts and the per-item evaluation promotion pairs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.registry.promotion import Evaluation, score_interval, with_predictions
from stages.common.registry.provenance import data_hash, idempotency_key


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """A registered version's metric tags (6 significant digits)."""
    return {k: f"{v:.6g}" for k, v in metrics.items()}


def code_key(eval_paths: list[Path], key_parts: dict[str, Any]) -> str:
    """Idempotency key of a registered ultrasound model: its evaluation inputs, ``key_parts``
    (the params) and the ultrasound code, hashed by content (retraining with changed code on the
    same data is a new model)."""
    return idempotency_key(eval_paths, key_parts, data_hash([Path(__file__).parent]))


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


def item_evaluation(
    items: list[str],
    clusters: list[str],
    y: Any,
    pred: Any,
    metric: str,
    score: str,
    seed: int,
) -> Evaluation:
    """Per-item evaluation clustered by patient (examination): a paired bootstrap of ``score``
    (a key of :data:`stages.common.registry.promotion.SCORES`) resampling patients."""
    frame = pd.DataFrame({"item": [str(i) for i in items], "cluster": clusters, "y": y})
    return Evaluation(with_predictions(frame, np.asarray(pred, dtype=float)), metric,
                      score=score, seed=seed)  # fmt: skip


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
        "split); intervals: bootstrap by patient. Promotion: the champion is re-scored on the "
        "same val crops and compared by a paired bootstrap by patient.",
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
        "patient. Promotion: the champion is re-scored on the same crops and corruptions, paired "
        "bootstrap by patient.",
        "failure_cases": [
            "real pathology was never seen: a high score is not a finding",
            "easy-to-reconstruct dark or smooth non-brain crops may score low",
            "a failed skull segmentation gives an off-centre crop and a high score",
        ],
    },
}


def card_facts(
    kind: str, data_version: str, training: tuple[str, str], metrics: dict[str, Any], **report: Any
) -> dict[str, Any]:
    """The model card's facts of an ultrasound model (:mod:`stages.common.registry.model_card`):
    ``training`` is (size with its unit, class balance); ``report`` fills the evaluation text."""
    text = CARD_TEXT[kind]
    inputs, outputs = CARD_IO[kind]
    return {
        "name": text["name"],
        "summary": text["summary"],
        "intended_use": "Research tool on fetal ultrasound images (HC18, FETAL_PLANES_DB): "
        "measurements and flags for a sonographer to check.",
        "inputs": inputs,
        "outputs": outputs,
        "data_version": data_version,
        "n_train": training[0],
        "class_balance": training[1],
        "evaluation": text["evaluation"].format(**report),
        "metrics": metrics,
        "failure_cases": text["failure_cases"],
    }


def interval_tag(evaluation: Evaluation) -> str:
    """The ``metric_interval`` tag: the 95 % patient-bootstrap interval of the promotion metric."""
    _, low, high = score_interval(evaluation)
    return f"[{low:.4f}, {high:.4f}]"
