"""Stage ``evaluate_us``: plane accuracy, anomaly AUROCs and segmentation on held-out images.

- Plane classifier: accuracy, macro-F1, per-class recall and the confusion matrix on the test
  split (FETAL_PLANES_DB ``Train == 0``: patients never seen in training or validation); the
  expected calibration error of its temperature-scaled probabilities and of the unscaled ones
  (``plane_ece``, ``plane_ece_uncalibrated``) with their reliability diagram
  (``figures/reliability.csv`` + ``.png``): the temperature was fitted on val, so this is
  the out-of-sample check.
- Autoencoder: validation MSE (the original project reported 0.00297 on its own images) and
  anomaly AUROCs on honest proxies, since FETAL_PLANES_DB has no anomaly labels: non-brain planes
  vs the test split's brain images, and synthetic corruptions (occlusion, noise, blank, inverted)
  of the test brain images vs the clean ones; for the model's own anomaly score (``anomaly_*``)
  and for the plain reconstruction MSE (``anomaly_mse_*``). The autoencoder is conditioned on
  the plane the classifier predicts, as in ``fetal score-us``. The false-alarm rate (test brain
  images flagged, ``ae_test_brain_flagged_rate``) against the model's ``target_false_alarm``
  and the non-brain detection rate (``ae_nonbrain_flagged_rate``), each with a 95 %
  patient-cluster bootstrap interval.
- Segmentation: Dice and head-circumference error on HC18, read from ``segment_us``'s table.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import write_csv, write_json
from stages.common.ml import metrics, plots
from stages.common.params import project_root
from stages.common.registry import tracking
from stages.common.settings import load_settings, settings
from stages.ultrasound.anomaly.autoencoder import latent_ring_parts
from stages.ultrasound.anomaly.corruptions import CLEAN, corrupted_copies
from stages.ultrasound.crops import PLANES, CropSettings, brain_rows, crops_for, to_unit_float
from stages.ultrasound.head.hc18 import hc18_summary
from stages.ultrasound.paths import (
    AUTOENCODER_DIR,
    CROPS_NPZ,
    EVALUATE_US_FIGURES,
    EVALUATE_US_REPORT,
    PLANE_CLASSIFIER_DIR,
    PLANES_MANIFEST_CSV,
    SEGMENTATION_CSV,
)
from stages.ultrasound.planes.reliability import write_reliability
from stages.ultrasound.serving.predictors import AutoencoderPredictor, PlanePredictor

log = logging.getLogger(__name__)


@settings
class EvaluateSettings:
    """The ``evaluate_us`` section: ``seed`` (bootstrap and corruptions), ``n_bootstrap``
    (resamples of the 95 % intervals), ``calibration_bins`` (of the plane ECE and reliability
    diagram). The corruptions' strengths are ``us_crops``'s."""

    seed: int
    n_bootstrap: int
    calibration_bins: int


def anomaly_auc(normal: np.ndarray, abnormal: np.ndarray, n_bootstrap: int, seed: int) -> dict:
    """ROC AUC (and 95 % bootstrap interval) of scores separating ``abnormal`` (1) from normal."""
    y = np.r_[np.zeros(len(normal)), np.ones(len(abnormal))].astype(int)
    s = np.r_[normal, abnormal]
    lo, hi = metrics.bootstrap_auc_ci(y, s, n_bootstrap, seed)
    return {
        "auroc": metrics.auc(y, s),
        "auroc_ci_low": lo,
        "auroc_ci_high": hi,
        "n_normal": len(normal),
        "n_abnormal": len(abnormal),
    }


def score_part_aurocs(
    ae: AutoencoderPredictor, normal_u8: np.ndarray, abnormal_u8: np.ndarray
) -> dict[str, float]:
    """Non-brain AUROC of each part of the anomaly score alone: ``latent`` (Mahalanobis
    distance of the autoencoder's code) and ``ring`` (skull-ring contrast, negated), so the
    README can say what each part contributes."""
    dist_n, ring_n = latent_ring_parts(ae.model, to_unit_float(normal_u8, ae.size), ae.latent)
    dist_a, ring_a = latent_ring_parts(ae.model, to_unit_float(abnormal_u8, ae.size), ae.latent)
    y = np.r_[np.zeros(len(dist_n)), np.ones(len(dist_a))].astype(int)
    return {
        "anomaly_part_latent_nonbrain_auroc": metrics.auc(y, np.r_[dist_n, dist_a]),
        "anomaly_part_ring_nonbrain_auroc": metrics.auc(y, -np.r_[ring_n, ring_a]),
    }


def flagged_rate(
    scores: np.ndarray, threshold: float, patients: pd.Series, prefix: str, n_boot: int, seed: int
) -> dict[str, float]:
    """Share of images whose score exceeds ``threshold``, with a 95 % interval resampling
    patients (their images are not independent); keys ``<prefix>``, ``_ci_low``, ``_ci_high``."""
    flags = np.asarray(scores) > threshold
    lo, hi = metrics.cluster_bootstrap_accuracy_ci(flags, patients.astype(str), n_boot, seed)
    rate = float(flags.mean()) if len(flags) else float("nan")
    return {prefix: rate, f"{prefix}_ci_low": lo, f"{prefix}_ci_high": hi}


def plane_report(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy, macro-F1, balanced accuracy, per-class recall and the confusion matrix."""
    n = len(PLANES)
    cm = metrics.confusion_matrix(y_true, y_pred, n)
    out = {f"plane_{k}": v for k, v in metrics.multiclass_metrics(y_true, y_pred, n).items()}
    for i, plane in enumerate(PLANES):
        support = cm[i].sum()
        out[f"recall_{plane}"] = float(cm[i, i] / support) if support else float("nan")
    return out, cm


def segmentation_report(seg: pd.DataFrame) -> dict[str, float]:
    """HC18 Dice / HC error (:func:`segment.hc18_summary`: an image without an ellipse costs
    its whole circumference) and the share of FETAL_PLANES images with a skull found."""
    hc = seg[seg["dataset"].eq("hc18")]
    fp = seg[seg["dataset"].eq("fetal_planes")]
    col = lambda c: hc.get(c, pd.Series(np.nan, index=hc.index))  # noqa: E731 (no HC18 rows)
    summ = hc18_summary(col("dice"), col("hc_signed_error_mm"), col("hc_true_mm"))
    return {
        "hc18_n": len(hc),
        "hc18_seg_ok_rate": float(hc["ok"].astype(bool).mean()) if len(hc) else float("nan"),
        "hc18_dice_mean": summ["dice_mean"],
        "hc18_dice_median": summ["dice_median"],
        "hc18_hc_abs_error_mm_mean": summ["hc_error_mm_mean"],
        "hc18_hc_abs_error_mm_median": summ["hc_error_mm_median"],
        # measured - sonographer: a systematic over- or under-estimate shows here
        "hc18_hc_signed_error_mm_mean": summ["hc_error_mm_signed_mean"],
        "fetal_planes_seg_ok_rate": float(fp["ok"].astype(bool).mean())
        if len(fp)
        else float("nan"),
    }


def plane_evaluation(
    plane: PlanePredictor, test: pd.DataFrame, test_x: np.ndarray, s: EvaluateSettings
) -> tuple[dict[str, float], dict[str, Any]]:
    """The plane classifier on the test split: metrics with a patient-cluster interval of the
    accuracy, and the tables behind the figures (confusion matrix, predictions, calibration)."""
    y_true = test["brain_plane"].map(PLANES.index).to_numpy(dtype=int)
    prob = plane.proba(test_x) if len(test) else np.zeros((0, len(PLANES)))
    y_pred = prob.argmax(axis=1)
    out, cm = plane_report(y_true, y_pred)
    lo, hi = metrics.cluster_bootstrap_accuracy_ci(
        y_true == y_pred, test["patient"], s.n_bootstrap, s.seed
    )
    out |= {"plane_accuracy_ci_low": lo, "plane_accuracy_ci_high": hi}
    calibration = {
        "uncalibrated": plane.proba(test_x, calibrate=False) if len(test) else prob,
        "temperature_scaled": prob,
    }
    predicted = [PLANES[i] for i in y_pred]
    tables = {"cm": cm, "test": test.assign(predicted=predicted), "y_true": y_true}
    return out, tables | {"calibration": calibration, "predicted": predicted}


def proxy_scores(
    ae: AutoencoderPredictor,
    plane: PlanePredictor,
    other: tuple[pd.DataFrame, np.ndarray],
    test_x: np.ndarray,
    test_planes: list[str],
    seed: int,
    crops: CropSettings,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The autoencoder's anomaly scores and plain reconstruction MSEs of the test brain crops
    (``test brain``), the non-brain crops (``non-brain``, conditioned on the plane the
    classifier predicts, as in ``fetal score-us``) and the corrupted copies of the test crops
    (:func:`~stages.ultrasound.anomaly.corruptions.corrupted_copies`)."""
    scores = {"test brain": ae.anomaly_scores(test_x, test_planes)}
    mse = {"test brain": ae.errors(test_x, test_planes)}
    other_rows, other_x = other
    if len(other_rows):
        other_planes = [PLANES[i] for i in plane.proba(other_x).argmax(axis=1)]
        scores["non-brain"] = ae.anomaly_scores(other_x, other_planes)
        mse["non-brain"] = ae.errors(other_x, other_planes)
    for kind, bad in corrupted_copies(test_x, seed, crops).items():
        if kind != CLEAN:
            scores[kind] = ae.anomaly_scores(bad, test_planes)
            mse[kind] = ae.errors(bad, test_planes)
    return scores, mse


def anomaly_aurocs(
    scores: dict[str, dict[str, np.ndarray]], n_bootstrap: int, seed: int
) -> dict[str, float]:
    """``<prefix>_<proxy>_auroc`` (with interval and counts) of each proxy against the test
    brain crops, for each prefix's scores (``anomaly``: the model's score; ``anomaly_mse``: the
    plain reconstruction MSE, for comparison)."""
    out: dict[str, float] = {}
    for prefix, table in scores.items():
        normal = table["test brain"]
        for kind, s in table.items():
            if kind != "test brain" and len(normal) and len(s):
                res = anomaly_auc(normal, s, n_bootstrap, seed)
                key = kind.replace("-", "").replace(" ", "_")
                out |= {f"{prefix}_{key}_{k}": v for k, v in res.items()}
    return out


def evaluate(
    plane: PlanePredictor,
    ae: AutoencoderPredictor,
    manifest: pd.DataFrame,
    names: np.ndarray,
    images: np.ndarray,
    s: EvaluateSettings,
    crops: CropSettings,
) -> tuple[dict[str, float], dict[str, Any]]:
    """All model metrics (flat) and the tables behind the figures."""
    nb, seed = s.n_bootstrap, s.seed
    val, test = brain_rows(manifest, "val"), brain_rows(manifest, "test")
    val_x, test_x = crops_for(val, names, images), crops_for(test, names, images)
    out: dict[str, float] = {"n_val": len(val), "n_test": len(test), "ae_threshold": ae.threshold}
    out["ae_val_mse"] = (
        float(np.mean(ae.errors(val_x, list(val["brain_plane"])))) if len(val) else float("nan")
    )
    plane_out, tables = plane_evaluation(plane, test, test_x, s)
    out |= plane_out
    other = manifest[~manifest["is_brain"].astype(bool)].reset_index(drop=True)
    other_x = crops_for(other, names, images) if len(other) else images[:0]
    scores, mse = proxy_scores(
        ae, plane, (other, other_x), test_x, tables["predicted"], seed, crops
    )
    out["ae_test_brain_mse"] = float(np.mean(mse["test brain"])) if len(test_x) else float("nan")
    out |= flagged_rate(
        scores["test brain"], ae.threshold, test["patient"], "ae_test_brain_flagged_rate", nb, seed
    )
    out["ae_target_false_alarm"] = float(ae.config["target_false_alarm"])
    if len(other):
        out |= flagged_rate(
            scores["non-brain"],
            ae.threshold,
            other["patient"],
            "ae_nonbrain_flagged_rate",
            nb,
            seed,
        )
        out |= score_part_aurocs(ae, test_x, other_x)
    out |= anomaly_aurocs({"anomaly": scores, "anomaly_mse": mse}, nb, seed)
    return out, tables | {"scores": scores}


def write_plane_figures(
    folder: Path, tables: dict[str, Any], bins: int, temperature: float
) -> dict[str, float]:
    """Confusion matrix (CSV + PNG), reliability diagram and the test predictions; returns the
    temperature and the test ECE before and after it (the out-of-sample check of the
    temperature fitted on val)."""
    cm = tables["cm"]
    actual, predicted = np.repeat(PLANES, len(PLANES)), np.tile(PLANES, len(PLANES))
    confusion = pd.DataFrame({"actual": actual, "predicted": predicted, "count": cm.ravel()})
    write_csv(folder / "confusion.csv", confusion)
    figure = plots.confusion_figure(cm, list(PLANES), "Plane (test split)")
    plots.save_figure(figure, folder / "confusion.png")
    title = f"Plane classifier, test split (T = {temperature:.2f})"
    ece = write_reliability(folder, tables["calibration"], tables["y_true"], bins, title)
    columns = ["image", "patient", "brain_plane", "predicted"]
    write_csv(folder / "test_predictions.csv", tables["test"][columns])
    return {
        "plane_temperature": temperature,
        "plane_ece": ece["temperature_scaled"],
        "plane_ece_uncalibrated": ece["uncalibrated"],
    }


def write_anomaly_figures(folder: Path, scores: dict[str, np.ndarray], threshold: float) -> None:
    """The anomaly score table, its histograms and the ROC curve of each proxy."""
    long = pd.concat([pd.DataFrame({"group": k, "anomaly_score": v}) for k, v in scores.items()])
    write_csv(folder / "anomaly_scores.csv", long)
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    low = max(long["anomaly_score"].min(), 1e-6)
    bins = np.logspace(np.log10(low), np.log10(max(long["anomaly_score"].max(), 1e-5)), 40)
    for k, v in scores.items():
        ax.hist(v, bins=bins, histtype="step", label=f"{k} (n={len(v)})")
    ax.axvline(threshold, color="k", ls="--", lw=0.8, label="threshold")
    ax.set(xscale="log", xlabel="anomaly score", ylabel="images", title="Anomaly scores")
    ax.legend(fontsize=7)
    plots.save_figure(fig, folder / "anomaly_hist.png")
    clean = scores["test brain"]
    curves, rows = {}, []
    for k, v in scores.items():
        if k == "test brain" or not len(v) or not len(clean):
            continue
        y = np.r_[np.zeros(len(clean)), np.ones(len(v))].astype(int)
        roc = metrics.roc_table(y, np.r_[clean, v])
        curves[f"{k} (AUC {metrics.auc(y, np.r_[clean, v]):.2f})"] = roc
        rows.append(pd.DataFrame({"proxy": k, "fpr": roc["fpr"], "tpr": roc["tpr"]}))
    if curves:
        write_csv(folder / "anomaly_roc.csv", pd.concat(rows))
        figure = plots.roc_figure(curves, "Anomaly proxies vs test brain")
        plots.save_figure(figure, folder / "anomaly_roc.png")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    s = load_settings(EvaluateSettings, "evaluate_us")
    crops = load_settings(CropSettings, "us_crops")
    root = project_root()
    manifest = pd.read_csv(root / PLANES_MANIFEST_CSV)
    with np.load(root / CROPS_NPZ) as z:
        names, images = z["names"], z["images"]
    plane = PlanePredictor(root / PLANE_CLASSIFIER_DIR)
    ae = AutoencoderPredictor(root / AUTOENCODER_DIR)
    logged = asdict(s) | {"us_crops": asdict(crops)}
    with tracking.run("us-evaluation", "evaluate_us", logged, stage="evaluate_us"):
        report, tables = evaluate(plane, ae, manifest, names, images, s, crops)
        report |= segmentation_report(pd.read_csv(root / SEGMENTATION_CSV))
        figures = root / EVALUATE_US_FIGURES
        report |= write_plane_figures(figures, tables, s.calibration_bins, plane.temperature)
        write_anomaly_figures(figures, tables["scores"], ae.threshold)
        tracking.log_metrics(report)
        tracking.log_artifact(figures, "figures")
    write_json(root / EVALUATE_US_REPORT, report)
    log.info(
        "plane accuracy %.3f, macro-F1 %.3f, non-brain AUROC %.3f, AE val MSE %.5f",
        report["plane_accuracy"],
        report["plane_macro_f1"],
        report.get("anomaly_nonbrain_auroc", float("nan")),
        report["ae_val_mse"],
    )


if __name__ == "__main__":
    main()
