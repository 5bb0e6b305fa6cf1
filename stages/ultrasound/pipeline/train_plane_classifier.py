"""Stage ``train_plane_classifier_us``: the brain-plane classifier of head crops.

Input is the segmented head crop (the skull ellipse rotated and scaled to the square, see
``stages.ultrasound.head.geometry.brain_crop``), so head size and orientation do not have to be
learned from ~110 training images. The model and its training are in
:mod:`stages.ultrasound.planes` (a fixed Gabor filter bank and a learned softmax read-out; light
augmentation, balanced class weights, no pretrained weights).

Calibration: one temperature (Guo et al. 2017, ICML) is fitted on the validation images,
stored as the model folder's ``config["temperature"]`` and applied by the predictor; the
reliability diagram before and after (``data/reports/train_plane_classifier_us/reliability.csv``
+ ``.png``) and both ECEs go into the report. The temperature is fitted on those same images,
so their ECE after scaling is in-sample: ``evaluate_us`` reports the test split's. The
calibrated val probabilities, image by image, are
``data/reports/train_plane_classifier_us/val_items.csv``: what the registry's ``register_us``
pairs a champion against. Registration is not this stage's job.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_csv, write_json, write_run_report
from stages.common.params import project_root
from stages.common.registry import tracking
from stages.common.settings import load_settings
from stages.ultrasound.crops import PLANES, CropSettings, brain_split_crops, to_unit_float
from stages.ultrasound.enhance.methods import EnhanceStageSettings, recipe_dict
from stages.ultrasound.head.settings import SegmentSettings
from stages.ultrasound.model_dir import bundle_segmenter, save_model_dir
from stages.ultrasound.paths import (
    CROPS_NPZ,
    FINAL_SEGMENTER,
    PLANE_CLASSIFIER_DIR,
    PLANES_MANIFEST_CSV,
    TRAIN_PLANE_CLASSIFIER_DIR,
    TRAIN_PLANE_CLASSIFIER_REPORT,
    TRAIN_PLANE_CLASSIFIER_VAL_ITEMS,
)
from stages.ultrasound.planes.classifier import (
    PlaneClassifierSettings,
    plane_items,
    plane_scores,
    predict_planes,
)
from stages.ultrasound.planes.reliability import write_reliability
from stages.ultrasound.planes.training import fit_calibration, train_plane_classifier

log = logging.getLogger(__name__)

REPORTED = ("val_accuracy", "val_log_loss_neg", "best_epoch", "epochs_run", "n_train", "n_val")


def calibrate(
    model: Any, x_val: np.ndarray, y_val: np.ndarray, s: PlaneClassifierSettings, folder: Path
) -> tuple[np.ndarray, dict[str, float]]:
    """Fit the temperature on the val crops and write their reliability diagram in ``folder``.

    Returns the calibrated val probabilities and the report's figures: the temperature, the
    ECE before and after scaling and the val log-loss (negated) of both.
    """
    prob = predict_planes(model, x_val, s.tta)
    temperature, scaled = fit_calibration(prob, y_val)
    ece = write_reliability(
        folder,
        {"uncalibrated": prob, "temperature_scaled": scaled},
        np.asarray(y_val, dtype=int),
        s.calibration_bins,
        f"Plane classifier, validation (T = {temperature:.2f})",
    )
    return scaled, {
        "temperature": temperature,
        "val_ece_uncalibrated": ece["uncalibrated"],
        "val_ece": ece["temperature_scaled"],
        "val_log_loss_neg_uncalibrated": plane_scores(prob, y_val)["val_log_loss_neg"],
        "val_log_loss_neg": plane_scores(scaled, y_val)["val_log_loss_neg"],
    }


def model_config(
    temperature: float,
    s: PlaneClassifierSettings,
    enhance: EnhanceStageSettings,
    segment: SegmentSettings,
    crop_px: int,
) -> dict[str, Any]:
    """The folder's ``config.json``: everything its predictor reads, nothing it must guess
    (the crops' recipe, so new images are cropped as the training crops were)."""
    return {
        "kind": "plane_classifier",
        "input_size": crop_px,
        "planes": list(PLANES),
        "tta": s.tta,
        "temperature": temperature,
        "enhance_us": recipe_dict(enhance),
        "segment_us": asdict(segment),
    }


def train(
    root: Path, s: PlaneClassifierSettings, crop_px: int
) -> tuple[Any, dict[str, Any], dict[str, Any], pd.DataFrame]:
    """Train and calibrate on val: the model, the training result, the report (with the facts a
    model card needs: the training patients and planes) and the calibrated val probabilities
    as items (:func:`~stages.ultrasound.planes.classifier.plane_items`)."""
    data = brain_split_crops(root / PLANES_MANIFEST_CSV, root / CROPS_NPZ)
    x = {k: to_unit_float(crops, crop_px) for k, (_, crops) in data.items()}
    y = {
        k: rows["brain_plane"].map(PLANES.index).to_numpy(dtype=int)
        for k, (rows, _) in data.items()
    }
    model, result = train_plane_classifier(x["train"], y["train"], x["val"], y["val"], s)
    scaled, calibration = calibrate(model, x["val"], y["val"], s, root / TRAIN_PLANE_CLASSIFIER_DIR)
    train_rows = data["train"][0]
    report = (
        {k: result[k] for k in REPORTED}
        | calibration
        | {
            "n_train_patients": int(train_rows["patient"].nunique()),
            "train_planes": {p: int((train_rows["brain_plane"] == p).sum()) for p in PLANES},
        }
    )
    return model, result, report, plane_items(data["val"][0], y["val"], scaled)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    s = load_settings(PlaneClassifierSettings, "train_plane_classifier_us")
    crop_px = load_settings(CropSettings, "us_crops").crop_px
    enhance = load_settings(EnhanceStageSettings, "enhance_us")
    segment = load_settings(SegmentSettings, "segment_us")
    root = project_root()
    logged = asdict(s) | {"us_crops.crop_px": crop_px}
    with tracking.run(
        "us-plane-classifier",
        "train_plane_classifier_us",
        logged,
        stage="train_plane_classifier_us",
    ):
        model, result, report, items = train(root, s, crop_px)
        with atomic_dir(root / PLANE_CLASSIFIER_DIR) as tmp:
            save_model_dir(
                model, tmp, model_config(report["temperature"], s, enhance, segment, crop_px)
            )
            # new images must be cropped by the segmenter that cropped the training images
            bundle_segmenter(tmp, segment.method, root / FINAL_SEGMENTER)
        times = result["epoch_times_s"]
        # times are run facts (untracked data/runs/ and MLflow), not model facts
        timings = {"epoch_time_s_mean": float(np.mean(times)), "train_time_s": float(sum(times))}
        tracking.log_metrics({k: v for k, v in report.items() if k != "train_planes"} | timings)
        for epoch, values in enumerate(zip(*result["history"].values(), strict=True)):
            tracking.log_metrics(dict(zip(result["history"], values, strict=True)), step=epoch)
    write_csv(root / TRAIN_PLANE_CLASSIFIER_VAL_ITEMS, items)
    write_json(root / TRAIN_PLANE_CLASSIFIER_REPORT, report)
    write_run_report(root, "train_plane_classifier_us", timings)
    log.info(
        "val accuracy %.3f, val log-loss %.3f", report["val_accuracy"], -report["val_log_loss_neg"]
    )


if __name__ == "__main__":
    main()
