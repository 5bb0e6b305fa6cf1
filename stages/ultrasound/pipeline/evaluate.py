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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import write_csv, write_json
from stages.common.ml import metrics, plots
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.ultrasound.anomaly.autoencoder import latent_ring_parts
from stages.ultrasound.anomaly.corruptions import CORRUPTIONS
from stages.ultrasound.crops import PLANES, brain_rows, crops_for, to_unit_float
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
    """Non-brain AUROC of each part of the ``latent_ring`` score alone ({} for other scores):
    ``latent`` (Mahalanobis distance of the autoencoder's code) and ``ring`` (skull-ring
    contrast, negated), so the README can say what each part contributes."""
    if ae.score_kind != "latent_ring":
        return {}
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


def evaluate(
    plane: PlanePredictor,
    ae: AutoencoderPredictor,
    manifest: pd.DataFrame,
    names: np.ndarray,
    images: np.ndarray,
    params: dict[str, Any],
) -> tuple[dict[str, float], dict[str, Any]]:
    """All model metrics (flat) and the tables behind the figures."""
    rng = np.random.default_rng(params["seed"])
    nb, seed = params["n_bootstrap"], params["seed"]
    val, test = brain_rows(manifest, "val"), brain_rows(manifest, "test")
    val_x, test_x = crops_for(val, names, images), crops_for(test, names, images)
    out: dict[str, float] = {"n_val": len(val), "n_test": len(test)}
    out["ae_val_mse"] = (
        float(np.mean(ae.errors(val_x, list(val["brain_plane"])))) if len(val) else float("nan")
    )
    out["ae_threshold"] = ae.threshold
    y_true = test["brain_plane"].map(PLANES.index).to_numpy(dtype=int)
    prob = plane.proba(test_x) if len(test) else np.zeros((0, len(PLANES)))
    y_pred = prob.argmax(axis=1)
    plane_metrics, cm = plane_report(y_true, y_pred)
    out |= plane_metrics
    lo, hi = metrics.cluster_bootstrap_accuracy_ci(y_true == y_pred, test["patient"], nb, seed)
    out |= {"plane_accuracy_ci_low": lo, "plane_accuracy_ci_high": hi}
    pred_planes = [PLANES[i] for i in y_pred]
    clean = ae.anomaly_scores(test_x, pred_planes)
    out["ae_test_brain_mse"] = (
        float(np.mean(ae.errors(test_x, pred_planes))) if len(test_x) else float("nan")
    )
    out |= flagged_rate(
        clean, ae.threshold, test["patient"], "ae_test_brain_flagged_rate", nb, seed
    )
    out["ae_target_false_alarm"] = float(ae.config.get("target_false_alarm", float("nan")))
    # The model's anomaly score and, for comparison, the plain reconstruction MSE of the same
    # images (``anomaly_mse_*``): the README shows both.
    scores = {"test brain": clean}
    mse_scores = {"test brain": ae.errors(test_x, pred_planes)}
    other = manifest[~manifest["is_brain"].astype(bool)].reset_index(drop=True)
    if len(other):
        other_x = crops_for(other, names, images)
        other_planes = [PLANES[i] for i in plane.proba(other_x).argmax(axis=1)]
        scores["non-brain"] = ae.anomaly_scores(other_x, other_planes)
        mse_scores["non-brain"] = ae.errors(other_x, other_planes)
        out |= flagged_rate(
            scores["non-brain"],
            ae.threshold,
            other["patient"],
            "ae_nonbrain_flagged_rate",
            nb,
            seed,
        )
        out |= score_part_aurocs(ae, test_x, other_x)
    for kind, corrupt in CORRUPTIONS.items():
        bad = corrupt(test_x, rng, params)
        scores[kind] = ae.anomaly_scores(bad, pred_planes)
        mse_scores[kind] = ae.errors(bad, pred_planes)
    for prefix, table in (("anomaly", scores), ("anomaly_mse", mse_scores)):
        normal = table["test brain"]
        for kind, s in table.items():
            if kind != "test brain" and len(normal) and len(s):
                res = anomaly_auc(normal, s, nb, seed)
                key = kind.replace("-", "").replace(" ", "_")
                out |= {f"{prefix}_{key}_{k}": v for k, v in res.items()}
    calibration = {
        "uncalibrated": plane.proba(test_x, calibrate=False) if len(test) else prob,
        "temperature_scaled": prob,
    }
    tables = {"cm": cm, "scores": scores, "test": test.assign(predicted=pred_planes)}
    return out, tables | {"calibration": calibration, "y_true": y_true}


def write_figures(folder: Path, tables: dict[str, Any], threshold: float) -> None:
    """Confusion matrix (CSV + PNG), anomaly score table, histograms and ROC curves."""
    cm = tables["cm"]
    actual = np.repeat(PLANES, len(PLANES))
    predicted = np.tile(PLANES, len(PLANES))
    write_csv(
        folder / "confusion.csv",
        pd.DataFrame({"actual": actual, "predicted": predicted, "count": cm.ravel()}),
    )
    plots.save_figure(
        plots.confusion_figure(cm, list(PLANES), "Plane (test split)"), folder / "confusion.png"
    )
    scores = tables["scores"]
    long = pd.concat([pd.DataFrame({"group": k, "anomaly_score": v}) for k, v in scores.items()])
    write_csv(folder / "anomaly_scores.csv", long)
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.logspace(
        np.log10(max(long["anomaly_score"].min(), 1e-6)),
        np.log10(max(long["anomaly_score"].max(), 1e-5)),
        40,
    )
    for k, v in scores.items():
        ax.hist(v, bins=bins, histtype="step", label=f"{k} (n={len(v)})")
    ax.axvline(threshold, color="k", ls="--", lw=0.8, label="threshold")
    ax.set(
        xscale="log",
        xlabel="anomaly score",
        ylabel="images",
        title="Anomaly scores",
    )
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
        plots.save_figure(
            plots.roc_figure(curves, "Anomaly proxies vs test brain"), folder / "anomaly_roc.png"
        )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params("evaluate_us")
    root = project_root()
    manifest = pd.read_csv(root / PLANES_MANIFEST_CSV)
    with np.load(root / CROPS_NPZ) as z:
        names, images = z["names"], z["images"]
    plane = PlanePredictor(root / PLANE_CLASSIFIER_DIR)
    ae = AutoencoderPredictor(root / AUTOENCODER_DIR)
    with tracking.run("us-evaluation", "evaluate_us", params, stage="evaluate_us"):
        report, tables = evaluate(plane, ae, manifest, names, images, params)
        report |= segmentation_report(pd.read_csv(root / SEGMENTATION_CSV))
        write_figures(root / EVALUATE_US_FIGURES, tables, ae.threshold)
        ece = write_reliability(
            root / EVALUATE_US_FIGURES,
            tables["calibration"],
            tables["y_true"],
            int(params["calibration_bins"]),
            f"Plane classifier, test split (T = {plane.temperature:.2f})",
        )
        report |= {
            "plane_temperature": plane.temperature,
            "plane_ece": ece["temperature_scaled"],
            "plane_ece_uncalibrated": ece["uncalibrated"],
        }
        write_csv(
            root / EVALUATE_US_FIGURES / "test_predictions.csv",
            tables["test"][["image", "patient", "brain_plane", "predicted"]],
        )
        tracking.log_metrics(report)
        tracking.log_artifact(root / EVALUATE_US_FIGURES, "figures")
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
