"""Stage ``train_plane_classifier_us``: a small from-scratch CNN for the three brain planes.

Input is the segmented head crop (the skull ellipse rotated and scaled to the square, see
``stages.ultrasound.head.geometry.brain_crop``), so head size and orientation do not have to be
learned from ~110 training images. Light augmentation (mirrors, small shifts, rotations and zoom)
and balanced class weights; no pretrained weights. Why the first version did not learn (val
accuracy 0.40, best epoch 1): batch normalisation with batches of 16 made inference swing between
epochs (val accuracy 0.16-0.52, often one plane for every image), strong augmentation kept the
network from fitting even the training images in ~200 steps, and early stopping on a 25-image
validation loss kept epoch 1. The settings are in params.yaml (``batch_norm``, ``augment``,
``early_stopping``, ``input_size``).

Calibration: the read-out's probabilities were over-confident (0.99 on a blank frame, 0.9997
for the wrong plane on a head from another hospital). One temperature (Guo et al. 2017,
ICML) is fitted on the validation images by minimising their log-loss, stored as the model
folder's ``config["temperature"]`` and applied by the predictor; the reliability diagram
before and after (``data/reports/train_plane_classifier_us/reliability.csv`` + ``.png``) and
both ECEs go into the report. The temperature is fitted on those same images, so their ECE
after scaling is in-sample: ``evaluate_us`` reports the test split's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_json, write_run_report
from stages.common.ml.calibration import fit_temperature, logits_from_probabilities
from stages.common.ml.training import class_weights, epoch_timer, seed_everything
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.common.registry.promotion import Evaluation, score_interval
from stages.common.registry.provenance import data_version
from stages.ultrasound import registration as registry
from stages.ultrasound.crops import PLANES, brain_split_crops, to_unit_float
from stages.ultrasound.model_dir import bundle_segmenter, save_model_dir
from stages.ultrasound.paths import (
    CROPS_NPZ,
    FINAL_SEGMENTER,
    PLANE_CLASSIFIER_DIR,
    PLANES_MANIFEST_CSV,
    TRAIN_PLANE_CLASSIFIER_DIR,
    TRAIN_PLANE_CLASSIFIER_REPORT,
)
from stages.ultrasound.planes.classifier import (
    build_plane_classifier,
    calibrated,
    fit_gabor_classifier,
    plane_scores,
    predict_planes,
)
from stages.ultrasound.planes.reliability import write_reliability

log = logging.getLogger(__name__)

SEGMENTER = FINAL_SEGMENTER  # bundled: new images are cropped as the training images were
LOADER = "stages.ultrasound.serving.predictors:load_plane_predictor"


def train_plane_classifier(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """Fit the plane CNN; with ``early_stopping`` keep the epoch with the lowest validation loss.

    Parameters
    ----------
    x_train, x_val
        Crops (N, S, S, 1) in [0, 1].
    y_train, y_val
        Plane indices into :data:`stages.ultrasound.crops.PLANES`.
    params
        The ``train_plane_classifier_us`` section.

    Returns
    -------
    model, result
        The Keras model and ``val_accuracy`` (with the params' test-time augmentation),
        ``best_epoch``, ``epoch_times_s``, ``history`` (per-epoch loss/accuracy lists).
    """
    import keras

    seed_everything(params["seed"])
    n = len(PLANES)
    frontend = params.get("frontend", "learned")
    model = build_plane_classifier(
        params["input_size"],
        n,
        params["filters"],
        params["dropout"],
        params["learning_rate"],
        params["augment"],
        batch_norm=params.get("batch_norm", True),
        seed=params["seed"],
        label_smoothing=params.get("label_smoothing", 0.0),
        standardize=params.get("standardize", False),
        frontend=frontend,
        gabor=params.get("gabor"),
        l2=params.get("l2", 0.0),
    )
    timer, times = epoch_timer()
    if frontend == "gabor":
        # The filter bank is fixed: features once per (augmented) image, then the read-out.
        t0 = time.perf_counter()
        history = fit_gabor_classifier(
            model,
            x_train,
            y_train,
            params["epochs"],
            params["batch_size"],
            params.get("n_augment", 0),
            params["augment"],
            params["seed"],
            x_val,
            y_val,
        )
        times.extend([(time.perf_counter() - t0) / max(params["epochs"], 1)] * params["epochs"])
        return _result(model, history, times, x_train, x_val, y_val, params, stopped=False)
    callbacks = [timer]
    validation = None
    if len(x_val):
        validation = (x_val, keras.utils.to_categorical(y_val, n))
    # On 25 validation images the loss jumps from epoch to epoch; picking its minimum picked
    # epoch 1 (an untrained network). ``early_stopping: false`` keeps the last epoch's weights.
    if validation is not None and params.get("early_stopping", True):
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=params["patience"],
                restore_best_weights=True,
                start_from_epoch=params["patience"],
            )
        )
    hist = model.fit(
        x_train,
        keras.utils.to_categorical(y_train, n),
        validation_data=validation,
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        shuffle=True,
        verbose=0,
        class_weight=class_weights(y_train, n),
        callbacks=callbacks,
    )
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    stopped = bool(params.get("early_stopping", True) and "val_loss" in history)
    return _result(model, history, times, x_train, x_val, y_val, params, stopped)


def _result(
    model: Any,
    history: dict[str, list[float]],
    times: list[float],
    x_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    params: dict[str, Any],
    stopped: bool,
) -> tuple[Any, dict[str, Any]]:
    scores = plane_scores(predict_planes(model, x_val, params["tta"]), y_val)
    # The epoch whose weights are kept: the lowest val loss with early stopping, else the last.
    best = int(np.argmin(history["val_loss"])) + 1 if stopped else len(times)
    return model, {
        **scores,
        "best_epoch": best,
        "epochs_run": len(times),
        "n_train": len(x_train),
        "n_val": len(x_val),
        "epoch_times_s": times,
        "history": history,
    }


def calibrate(
    model: Any, x_val: np.ndarray, y_val: np.ndarray, params: dict[str, Any], folder: Path
) -> tuple[float, dict[str, float]]:
    """Fit the temperature on the validation crops; write their reliability diagram.

    Returns the temperature (1 without validation images) and the report's metrics: ECE
    before and after scaling, and the validation log-loss (negated) of the scaled
    probabilities, the promotion metric (a champion is re-scored through its predictor, which
    applies its own temperature), with the unscaled one for comparison.
    """
    prob = predict_planes(model, x_val, params["tta"])
    y = np.asarray(y_val, dtype=int)
    temperature = fit_temperature(logits_from_probabilities(prob), y) if len(y) else 1.0
    scaled = calibrated(prob, temperature)
    ece = write_reliability(
        folder,
        {"uncalibrated": prob, "temperature_scaled": scaled},
        y,
        int(params["calibration_bins"]),
        f"Plane classifier, validation (T = {temperature:.2f})",
    )
    return temperature, {
        "temperature": temperature,
        "val_ece_uncalibrated": ece["uncalibrated"],
        "val_ece": ece["temperature_scaled"],
        "val_log_loss_neg_uncalibrated": plane_scores(prob, y)["val_log_loss_neg"],
        "val_log_loss_neg": plane_scores(scaled, y)["val_log_loss_neg"],
    }


def plane_card(
    report: dict[str, Any], evaluation: Evaluation, train_rows: pd.DataFrame, version: str
) -> dict[str, Any]:
    """The model card's facts from this stage's report and its val evaluation."""
    accuracy = replace(evaluation, score="accuracy")
    loss, loss_low, loss_high = score_interval(evaluation)
    counts = train_rows["brain_plane"].value_counts().to_dict()
    metrics = {
        "val_accuracy": score_interval(accuracy),
        "val_log_loss": (-loss, -loss_high, -loss_low),
        "best_epoch": report["best_epoch"],
    }
    n_train = f"{report['n_train']} head crops of {train_rows['patient'].nunique()} patients"
    balance = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return registry.card_facts(
        "plane_classifier", version, (n_train, balance), metrics, n_val=report["n_val"]
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params("train_plane_classifier_us")
    crop_params = {"enhance_us": load_params("enhance_us"), "segment_us": load_params("segment_us")}
    root = project_root()
    data, crops_u8, rows_of = {}, {}, {}
    for split, (rows, crops) in brain_split_crops(
        root / PLANES_MANIFEST_CSV, root / CROPS_NPZ
    ).items():
        rows_of[split], crops_u8[split] = rows, crops
        x = to_unit_float(crops_u8[split], params["input_size"])
        data[split] = (x, rows["brain_plane"].map(PLANES.index).to_numpy(dtype=int))
    with tracking.run(
        "us-plane-classifier",
        "train_plane_classifier_us",
        params,
        stage="train_plane_classifier_us",
    ):
        model, result = train_plane_classifier(*data["train"], *data["val"], params)
        temperature, calibration = calibrate(
            model, *data["val"], params, root / TRAIN_PLANE_CLASSIFIER_DIR
        )
        config = {
            "kind": "plane_classifier",
            "input_size": params["input_size"],
            "planes": list(PLANES),
            "tta": params["tta"],
            "temperature": temperature,
            **crop_params,
        }
        with atomic_dir(root / PLANE_CLASSIFIER_DIR) as tmp:
            save_model_dir(model, tmp, config)
            # new images must be cropped by the segmenter that cropped the training images
            bundle_segmenter(tmp, crop_params["segment_us"], root / SEGMENTER)
        times = result["epoch_times_s"]
        report = {
            k: result[k]
            for k in (
                "val_accuracy",
                "val_log_loss_neg",
                "best_epoch",
                "epochs_run",
                "n_train",
                "n_val",
            )
        }
        # times are run facts (untracked data/runs/ and MLflow), not model facts
        timings = {"epoch_time_s_mean": float(np.mean(times)), "train_time_s": float(sum(times))}
        report |= calibration  # val_log_loss_neg: of the temperature-scaled probabilities
        tracking.log_metrics({**report, **timings})
        for epoch, values in enumerate(zip(*result["history"].values(), strict=True)):
            tracking.log_metrics(dict(zip(result["history"], values, strict=True)), step=epoch)
        eval_paths = [root / CROPS_NPZ, root / PLANES_MANIFEST_CSV]
        metrics = {k: report[k] for k in ("val_accuracy", "val_log_loss_neg")}
        version = data_version(root, ["us", "fetal_planes"], eval_paths)
        val = rows_of["val"]
        evaluation = registry.item_evaluation(
            list(val["image"]), list(val["patient"].astype(str)), data["val"][1],
            predict_planes(model, data["val"][0], params["tta"]),
            params["promote_metric"], "log_loss_neg", int(params["seed"]),
        )  # fmt: skip
        decision = tracking.register_and_promote(
            root / PLANE_CLASSIFIER_DIR,
            LOADER,
            params["registered_name"],
            {**registry.metric_tags(metrics), "eval_data_hash": tracking.data_hash(eval_paths),
             "data_version": version, "metric_interval": registry.interval_tag(evaluation)},
            registry.code_key(eval_paths, {"params": params, **crop_params}),
            params["promote_metric"],
            params["promote_margin"],
            evaluation=evaluation,
            card_facts=plane_card(report, evaluation, rows_of["train"], version),
            # the champion's probabilities on exactly these val crops (paired per image)
            rescore=lambda champion: champion.proba(crops_u8["val"]),
            signature=registry.SIGNATURES["plane_classifier"],
        ).to_dict()  # fmt: skip
    write_json(root / TRAIN_PLANE_CLASSIFIER_REPORT, report)
    write_run_report(root, "train_plane_classifier_us", timings)
    log.info(
        "val accuracy %.3f (best epoch %d); %s",
        report["val_accuracy"],
        report["best_epoch"],
        decision["reason"],
    )


if __name__ == "__main__":
    main()
