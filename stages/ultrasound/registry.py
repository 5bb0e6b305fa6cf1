"""What an ultrasound model version is registered with: metric tags, idempotency key, signature,
model card facts and the per-item evaluation promotion pairs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.promotion import Evaluation, score_interval, with_predictions
from stages.common.provenance import data_hash, idempotency_key


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """A registered version's metric tags (6 significant digits)."""
    return {k: f"{v:.6g}" for k, v in metrics.items()}


def code_key(eval_paths: list[Path], key_parts: dict[str, Any]) -> str:
    """Idempotency key of a registered ultrasound model: its evaluation inputs, ``key_parts``
    (the params) and the ultrasound code, hashed by content (retraining with changed code on the
    same data is a new model)."""
    return idempotency_key(eval_paths, key_parts, data_hash([Path(__file__).parent]))


# MLflow signature specs (stages.common.tracking.model_signature): raw 2-D uint8 images in.
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
    (a key of :data:`stages.common.promotion.SCORES`) resampling patients."""
    frame = pd.DataFrame({"item": [str(i) for i in items], "cluster": clusters, "y": y})
    return Evaluation(with_predictions(frame, np.asarray(pred, dtype=float)), metric,
                      score=score, seed=seed)  # fmt: skip


def card_facts(
    kind: str,
    name: str,
    summary: str,
    data_version: str,
    n_train: str,
    class_balance: str,
    evaluation: str,
    metrics: dict[str, Any],
    failure_cases: list[str],
) -> dict[str, Any]:
    """The model card's facts of an ultrasound model (:mod:`stages.common.model_card`)."""
    inputs, outputs = CARD_IO[kind]
    return {
        "name": name,
        "summary": summary,
        "intended_use": "Research tool on fetal ultrasound images (HC18, FETAL_PLANES_DB): "
        "measurements and flags for a sonographer to check.",
        "inputs": inputs,
        "outputs": outputs,
        "data_version": data_version,
        "n_train": n_train,
        "class_balance": class_balance,
        "evaluation": evaluation,
        "metrics": metrics,
        "failure_cases": failure_cases,
    }


def interval_tag(evaluation: Evaluation) -> str:
    """The ``metric_interval`` tag: the 95 % patient-bootstrap interval of the promotion metric."""
    _, low, high = score_interval(evaluation)
    return f"[{low:.4f}, {high:.4f}]"
