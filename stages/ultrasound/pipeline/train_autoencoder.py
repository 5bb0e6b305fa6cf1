"""Stage ``train_autoencoder_us``: a plane-conditioned convolutional autoencoder of brain crops.

Trained on the train split's brain crops only (grayscale, scaled to [0, 1]). The anomaly
threshold is a conformal quantile (``target_false_alarm``) of out-of-fold scores of every train
and val brain image, patient-grouped folds over the latent statistics of the one trained
encoder (:mod:`stages.ultrasound.anomaly.threshold`, with its caveat); the reconstruction scores
(no statistics to refit) use the val images' scores alone.
The score is a parameter (``anomaly_score``); params.yaml uses the Mahalanobis distance of the
encoder's bottleneck code to the training brain codes. Reconstruction MSE, raw or divided by
the image's variance, rewards images that are simply easy to reconstruct: dark, smooth
non-brain crops reconstruct as well as brains (non-brain AUROC about 0.4, worse than chance).
FETAL_PLANES_DB has no anomaly labels: the autoencoder flags images unlike its training images
(quality, plane or possibly pathology); it is not a diagnosis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_json, write_run_report
from stages.common.ml import metrics
from stages.common.ml.training import epoch_timer, seed_everything
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.common.registry.promotion import score_interval
from stages.common.registry.provenance import data_version
from stages.ultrasound import registration as registry
from stages.ultrasound.anomaly.autoencoder import (
    LATENT_SCORES,
    build_autoencoder,
    fit_latent,
    latent_codes,
    reconstruct,
    score_anomaly,
)
from stages.ultrasound.anomaly.corruptions import CORRUPTIONS
from stages.ultrasound.anomaly.threshold import (
    conformal_quantile,
    out_of_fold_scores,
    patient_folds,
)
from stages.ultrasound.crops import (
    PLANES,
    brain_split_crops,
    plane_one_hot,
    to_unit_float,
)
from stages.ultrasound.model_dir import bundle_segmenter, save_model_dir
from stages.ultrasound.paths import (
    AUTOENCODER_DIR,
    CROPS_NPZ,
    FINAL_SEGMENTER,
    PLANES_MANIFEST_CSV,
    TRAIN_AUTOENCODER_REPORT,
)

log = logging.getLogger(__name__)

SEGMENTER = FINAL_SEGMENTER  # bundled: new images are cropped as the training images were
LOADER = "stages.ultrasound.serving.predictors:load_autoencoder_predictor"


def anomaly_threshold(
    model: Any,
    x: tuple[np.ndarray, np.ndarray],
    planes: tuple[np.ndarray, np.ndarray],
    latent: dict[str, np.ndarray],
    params: dict[str, Any],
    patients: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The threshold (:mod:`stages.ultrasound.anomaly.threshold`) and how it was chosen.

    ``x``, ``planes`` and ``patients`` are (train, val) pairs; without patients each image
    is its own group. Returns ``threshold``, ``threshold_method``, ``threshold_n`` (scores
    behind it), ``val_flagged_rate`` (the val images flagged by the final model at the
    threshold: honest for the encoder and the Gaussian alike, but ~25 images) and
    ``val_percentile_threshold`` (the former rule: that percentile of the val scores alone).
    """
    kind, alpha = params.get("anomaly_score", "normalised_mse"), float(params["target_false_alarm"])
    has_val = len(x[1]) > 0
    x_thr, p_thr = (x[1], planes[1]) if has_val else (x[0], planes[0])
    final = score_anomaly(kind, model, x_thr, p_thr, latent)
    method, scores = "val_conformal", final
    if kind in LATENT_SCORES:
        x_all = np.concatenate([x[0], x[1]])
        n_tr = len(x[0])
        groups = (
            [*patients[0], *patients[1]] if patients else [f"image{i}" for i in range(len(x_all))]
        )
        folds = patient_folds(groups, params["threshold_folds"], params["seed"])
        if folds is not None:
            codes = latent_codes(model, x_all)
            shrinkage = params["latent_shrinkage"]
            scores = out_of_fold_scores(kind, codes, x_all, folds, shrinkage)
            method = "oof_conformal"
            log.info("threshold from %d out-of-fold scores (%d of train images)", len(scores), n_tr)
    threshold = conformal_quantile(scores, alpha)
    return {
        "threshold": threshold,
        "threshold_method": method,
        "threshold_n": len(scores),
        "val_flagged_rate": float(np.mean(final > threshold)) if has_val else float("nan"),
        "val_percentile_threshold": float(np.percentile(final, 100 * (1 - alpha))),
    }


def train_autoencoder(
    x_train: np.ndarray,
    planes_train: np.ndarray,
    x_val: np.ndarray,
    planes_val: np.ndarray,
    params: dict[str, Any],
    patients: tuple[Sequence[str], Sequence[str]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the autoencoder and derive its anomaly threshold.

    Parameters
    ----------
    x_train, x_val
        Crops (N, S, S, 1) in [0, 1], S = ``params["input_size"]``.
    planes_train, planes_val
        One-hot planes (N, 3).
    params
        The ``train_autoencoder_us`` section.
    patients
        Patient of each (train, val) image: the groups of the threshold's folds.

    Returns
    -------
    model, result
        The fitted Keras model and ``val_mse`` (mean per-image MSE on val), ``train_mse``,
        the threshold of the score named by ``params["anomaly_score"]`` (see
        :data:`stages.ultrasound.anomaly.autoencoder.ANOMALY_SCORES`) and how it was chosen
        (:func:`anomaly_threshold`), ``epoch_times_s`` and ``latent`` (the training codes'
        statistics for the latent scores, else empty).
    """
    seed_everything(params["seed"])
    model = build_autoencoder(
        params["input_size"], params["filters"], learning_rate=params["learning_rate"]
    )
    timer, times = epoch_timer()
    inputs = {"image": x_train, "plane": planes_train}
    model.fit(
        inputs,
        x_train,
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        shuffle=True,
        verbose=0,
        callbacks=[timer],
    )
    recon_tr = reconstruct(model, x_train, planes_train)
    train_mse = np.mean((recon_tr - x_train) ** 2)
    kind = params.get("anomaly_score", "normalised_mse")
    # The normal class is the training brain codes (the final statistics: train images only).
    codes_tr = latent_codes(model, x_train) if kind in LATENT_SCORES else None
    latent = fit_latent(kind, codes_tr, x_train, params.get("latent_shrinkage", 0.0))
    x_val_or_train = x_val if len(x_val) else x_train
    recon = reconstruct(model, x_val_or_train, planes_val if len(x_val) else planes_train)
    result = {
        "train_mse": float(train_mse),
        "val_mse": float(np.mean((recon - x_val_or_train) ** 2)),
        **anomaly_threshold(
            model, (x_train, x_val), (planes_train, planes_val), latent, params, patients
        ),
        "n_train": len(x_train),
        "n_val": len(x_val),
        "epoch_times_s": [round(t, 3) for t in times],
        "latent": latent,
    }
    return model, result


def anomaly_scorer(
    model: Any, planes: np.ndarray, latent: dict[str, np.ndarray], params: dict[str, Any]
) -> Callable[[np.ndarray], np.ndarray]:
    """``score(crops_u8)``: the anomaly score named by ``params`` of a freshly trained model."""
    kind, size = params.get("anomaly_score", "normalised_mse"), params["input_size"]

    def score(x_u8: np.ndarray) -> np.ndarray:
        return score_anomaly(kind, model, to_unit_float(x_u8, size), planes, latent)

    return score


def corruption_scores(
    score: Callable[[np.ndarray], np.ndarray], crops_u8: np.ndarray, params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """``(y, scores)``: ``score`` of ``crops_u8`` (y = 0) then of corrupted copies (y = 1).

    Every corruption of :data:`stages.ultrasound.anomaly.corruptions.CORRUPTIONS` (occlusion, noise,
    blank, inverted; strengths from ``params["val_corruption"]``) is applied to every crop, in that
    order, seeded: every version is scored on the same images and the same corruptions, item by item
    (the pairing of promotion). ``score`` maps uint8 crops to anomaly scores (:func:`anomaly_scorer`
    for a new model, a registered predictor's ``anomaly_scores``).
    """
    rng = np.random.default_rng(params["seed"])
    clean = score(crops_u8)
    bad = [score(fn(crops_u8, rng, params["val_corruption"])) for fn in CORRUPTIONS.values()]
    y = np.r_[np.zeros(len(clean)), np.ones(len(clean) * len(bad))].astype(int)
    return y, np.concatenate([clean, *bad])


def corruption_auroc(
    score: Callable[[np.ndarray], np.ndarray], crops_u8: np.ndarray, params: dict[str, Any]
) -> float:
    """AUROC of ``score`` separating ``crops_u8`` from corrupted copies of them
    (:func:`corruption_scores`). This is the promotion metric: validation MSE rewards an
    autoencoder that reconstructs anything well, non-brain images included, the opposite of
    what a detector should do. NaN without crops.
    """
    if len(crops_u8) == 0:
        return float("nan")
    return metrics.auc(*corruption_scores(score, crops_u8, params))


def corruption_items(rows: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Item ids and patients of :func:`corruption_scores`' rows (crop, then crop|corruption)."""
    names, patients = list(rows["image"]), list(rows["patient"].astype(str))
    ids = names + [f"{n}|{c}" for c in CORRUPTIONS for n in names]
    return ids, patients * (1 + len(CORRUPTIONS))


def autoencoder_card(report: dict[str, Any], evaluation: Any, n_train: str, version: str) -> dict:
    """The model card's facts from this stage's report and its val evaluation."""
    metrics = {
        "val_corruption_auroc": score_interval(evaluation),
        "val_mse": report["val_mse"],
        "threshold": report["threshold"],
    }
    no_labels = "no anomaly labels: trained on normal-appearing brain crops only"
    return registry.card_facts("autoencoder", version, (n_train, no_labels), metrics)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params("train_autoencoder_us")
    crop_params = {"enhance_us": load_params("enhance_us"), "segment_us": load_params("segment_us")}
    root = project_root()
    size = params["input_size"]
    data, crops_u8, patients = {}, {}, {}
    for split, (rows, crops) in brain_split_crops(
        root / PLANES_MANIFEST_CSV, root / CROPS_NPZ
    ).items():
        patients[split] = list(rows["patient"].astype(str))
        if split == "val":
            planes_val, val_rows = list(rows["brain_plane"]), rows
        crops_u8[split] = crops
        data[split] = (
            to_unit_float(crops_u8[split], size),
            plane_one_hot(rows["brain_plane"]),
        )
    with tracking.run(
        "us-brain-autoencoder", "train_autoencoder_us", params, stage="train_autoencoder_us"
    ):
        model, result = train_autoencoder(
            *data["train"], *data["val"], params, (patients["train"], patients["val"])
        )
        y_val, val_scores = corruption_scores(
            anomaly_scorer(model, data["val"][1], result["latent"], params), crops_u8["val"], params
        )
        result["val_corruption_auroc"] = metrics.auc(y_val, val_scores) if len(y_val) else np.nan
        config = {
            "kind": "autoencoder",
            "input_size": size,
            "planes": list(PLANES),
            "threshold": result["threshold"],
            "val_mse": result["val_mse"],
            "threshold_method": result["threshold_method"],
            "target_false_alarm": params["target_false_alarm"],
            "anomaly_score": params.get("anomaly_score", "normalised_mse"),
            **crop_params,
        }
        with atomic_dir(root / AUTOENCODER_DIR) as tmp:
            save_model_dir(model, tmp, config, result["latent"])
            # new images must be cropped by the segmenter that cropped the training images
            bundle_segmenter(tmp, crop_params["segment_us"], root / SEGMENTER)
        times = result["epoch_times_s"]
        # threshold_method (a word) goes to the model's config, not into the metrics
        skip = ("epoch_times_s", "latent", "threshold_method")
        report = {k: v for k, v in result.items() if k not in skip}
        report["val_mse_neg"] = -result["val_mse"]
        # times are run facts (untracked data/runs/ and MLflow), not model facts
        timings = {
            "epoch_time_s_mean": float(np.mean(times)),
            "train_time_s": float(np.sum(times)),
            "epoch_times_s": times,
        }
        tracking.log_metrics(
            {k: v for k, v in {**report, **timings}.items() if not isinstance(v, list)}
        )
        eval_paths = [root / CROPS_NPZ, root / PLANES_MANIFEST_CSV]
        values = {
            k: report[k] for k in ("val_mse", "val_mse_neg", "val_corruption_auroc", "threshold")
        }
        version = data_version(root, ["us", "fetal_planes"], eval_paths)
        ids, patients = corruption_items(val_rows)
        evaluation = registry.item_evaluation(
            ids, patients, y_val, val_scores, params["promote_metric"], "auc", int(params["seed"])
        )
        n_train = f"{len(crops_u8['train'])} brain crops"
        decision = tracking.register_and_promote(
            root / AUTOENCODER_DIR,
            LOADER,
            params["registered_name"],
            {**registry.metric_tags(values), "eval_data_hash": tracking.data_hash(eval_paths),
             "data_version": version, "metric_interval": registry.interval_tag(evaluation)},
            registry.code_key(eval_paths, {"params": params, **crop_params}),
            params["promote_metric"],
            params["promote_margin"],
            evaluation=evaluation,
            card_facts=autoencoder_card(report, evaluation, n_train, version),
            # the champion's scores on exactly these crops and corruptions (paired per item)
            rescore=lambda champion: corruption_scores(
                lambda x: champion.anomaly_scores(x, planes_val), crops_u8["val"], params
            )[1],
            signature=registry.SIGNATURES["autoencoder"],
        ).to_dict()  # fmt: skip
    write_json(root / TRAIN_AUTOENCODER_REPORT, report)
    write_run_report(root, "train_autoencoder_us", timings)
    log.info(
        "val MSE %.5f, val corruption AUROC %.3f, threshold %.5f; %s",
        report["val_mse"],
        report["val_corruption_auroc"],
        report["threshold"],
        decision["reason"],
    )


if __name__ == "__main__":
    main()
