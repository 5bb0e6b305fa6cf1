"""Stage ``evaluate_ctg``: out-of-fold metrics of the CTG network beside a FIGO-feature baseline.

Every number comes from out-of-fold (OOF) probabilities, record-level: the network's from
``train_ctg``, the baseline's from a standardised logistic regression on the FIGO-style features
fitted on the same folds here. The AUC has a percentile bootstrap 95% interval. Thresholded
metrics use the operating threshold of ``params.yaml``: ``youden`` picks it on the OOF
probabilities themselves (optimistic for sensitivity/specificity; the report says so) or a fixed
probability. Metrics are repeated at each pH threshold of ``ph_thresholds`` (the first one is
the training label) with the same probabilities and threshold; keys of the others carry a
``ph705``-style prefix. The signal-loss fraction alone is reported as a reference predictor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import io
from stages.common.ml import metrics as M
from stages.common.ml import plots
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.ctg.models import families
from stages.ctg.paths import (
    CTG_MODEL_DIR,
    CTU_UHB_RAW,
    EVALUATE_CTG_DIR,
    EVALUATE_CTG_REPORT,
    FEATURES_CSV,
    OOF_PREDICTIONS_CSV,
    RECORDS_CSV,
)

log = logging.getLogger(__name__)

# Thresholded metrics copied into the report (counts tp/fp/... go to the confusion CSV).
REPORTED = (
    "auc",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "precision",
    "f1",
    "n_pos",
    "n_neg",
)


def baseline_oof(
    features: pd.DataFrame, labels: np.ndarray, folds: np.ndarray, c: float, seed: int
) -> np.ndarray:
    """OOF probabilities of the logistic family (:func:`families.logistic_pipeline`: median
    imputation, standardisation, balanced classes) on the informative numeric feature columns:
    the same model ``train_families_ctg`` registers as ``logistic``."""
    cols = families.informative_columns(features)
    return families.oof_predict(
        lambda: families.logistic_pipeline(c, seed), features[cols].to_numpy(float), labels, folds
    )


def operating_threshold(setting: Any, y: np.ndarray, prob: np.ndarray) -> tuple[float, str]:
    """(threshold, how it was chosen) from the ``operating_threshold`` param."""
    rules = {
        "youden": lambda: (
            M.youden_threshold(y, prob),
            "youden on out-of-fold probabilities (optimistic)",
        )
    }
    if isinstance(setting, str):
        if setting not in rules:
            raise ValueError(
                f"operating_threshold {setting!r}: use one of {sorted(rules)} or a probability"
            )
        return rules[setting]()
    return float(setting), "fixed probability from params.yaml"


def ph_key(ph: float) -> str:
    """``7.05`` -> ``ph705``."""
    return "ph" + f"{ph:.2f}".replace(".", "")


def evaluate(
    table: pd.DataFrame,
    scores: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    ph_thresholds: list[float],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Flat metrics ``{model}.{metric}`` (first pH) and ``{model}.{phNNN}.{metric}`` (others)."""
    out: dict[str, Any] = {}
    ph = table["ph"].to_numpy(float)
    for i, ph_t in enumerate(ph_thresholds):
        y = table["label"].to_numpy(int) if i == 0 else (ph < ph_t).astype(int)
        for name, prob in scores.items():
            prefix = name if i == 0 else f"{name}.{ph_key(ph_t)}"
            ok = ~np.isnan(prob)
            m = M.binary_metrics(y[ok], prob[ok], thresholds.get(name, 0.5))
            # A score without an operating threshold (signal loss) only gets its AUC.
            for k in REPORTED if name in thresholds else ("auc",):
                out[f"{prefix}.{k}"] = m[k]
            lo, hi = M.bootstrap_auc_ci(y[ok], prob[ok], n_bootstrap, seed)
            out[f"{prefix}.auc_ci_low"], out[f"{prefix}.auc_ci_high"] = lo, hi
            if name in thresholds:
                out[f"{prefix}.threshold"] = thresholds[name]
    return out


def metrics_table(report: Mapping[str, Any], ph_thresholds: list[float]) -> str:
    """The report as a markdown table: one row per model and pH threshold."""
    cols = ["auc", "sensitivity", "specificity", "balanced_accuracy", "precision", "f1"]
    lines = [
        "| model | label | AUC [95% CI] | sens. | spec. | bal. acc. | precision | F1 | pos/neg |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, ph in enumerate(ph_thresholds):
        for name in ("lstm", "baseline", "signal_loss"):
            key = name if i == 0 else f"{name}.{ph_key(ph)}"
            if f"{key}.auc" not in report:
                continue
            auc_txt = (
                f"{report[f'{key}.auc']:.3f} [{report[f'{key}.auc_ci_low']:.3f}, "
                f"{report[f'{key}.auc_ci_high']:.3f}]"
            )
            cells = [f"{report[f'{key}.{c}']:.3f}" if f"{key}.{c}" in report else "" for c in cols]
            n_pos = report.get(f"{key}.n_pos", report.get(f"lstm.{ph_key(ph)}.n_pos", ""))
            n_neg = report.get(f"{key}.n_neg", "")
            balance = f"{n_pos}/{n_neg}" if n_neg != "" else ""
            lines.append(
                f"| {name} | pH < {ph:.2f} | {auc_txt} | "
                + " | ".join(cells[1:])
                + f" | {balance} |"
            )
    return "\n".join(lines)


def write_curves(
    root: Path,
    table: pd.DataFrame,
    scores: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
) -> dict[str, Any]:
    """DVC plot CSVs (the network) and PNG figures (network beside baseline); the figures."""
    y = table["label"].to_numpy(int)
    lstm = scores["lstm"]
    io.write_csv(root / EVALUATE_CTG_DIR / "roc.csv", pd.DataFrame(M.roc_table(y, lstm)))
    io.write_csv(root / EVALUATE_CTG_DIR / "pr.csv", pd.DataFrame(M.pr_table(y, lstm)))
    io.write_csv(
        root / EVALUATE_CTG_DIR / "calibration.csv", pd.DataFrame(M.calibration_table(y, lstm))
    )
    pred = (lstm >= thresholds["lstm"]).astype(int)
    names = np.array(["normal", "acidemic"])
    io.write_csv(
        root / EVALUATE_CTG_DIR / "confusion.csv",
        pd.DataFrame({"record": table["record"], "actual": names[y], "predicted": names[pred]}),
    )
    labels = {n: f"{n} (AUC {M.auc(y, p):.3f})" for n, p in scores.items()}
    figs = {
        "roc.png": plots.roc_figure(
            {labels[n]: M.roc_table(y, p) for n, p in scores.items()}, "ROC, out-of-fold"
        ),
        "pr.png": plots.pr_figure(
            {labels[n]: M.pr_table(y, p) for n, p in scores.items()},
            float(y.mean()),
            "Precision-recall, out-of-fold",
        ),
        "calibration.png": plots.calibration_figure(
            {n: M.calibration_table(y, p) for n, p in scores.items() if n != "signal_loss"}
        ),
        "confusion.png": plots.confusion_figure(
            M.confusion_matrix(y, pred, 2),
            list(names),
            f"LSTM at threshold {thresholds['lstm']:.3f}",
        ),
    }
    return figs


def example_records(table: pd.DataFrame, prob: np.ndarray, ph_max: float) -> dict[str, str]:
    """Two records to draw: the acidemic one (pH < ``ph_max``) the network ranked highest
    out-of-fold, and the normal one (label 0) it ranked lowest; {caption: record}."""
    acid = table.assign(p=prob)[table["ph"] < ph_max].dropna(subset=["p"])
    normal = table.assign(p=prob)[table["label"] == 0].dropna(subset=["p"])
    out = {}
    if len(acid):
        r = acid.loc[acid["p"].idxmax()]
        out[f"acidemic, pH {r['ph']:.2f}"] = str(r["record"])
    if len(normal):
        r = normal.loc[normal["p"].idxmin()]
        out[f"normal, pH {r['ph']:.2f}"] = str(r["record"])
    return out


def trace_figures(root: Path, examples: dict[str, str]) -> dict[str, Any]:
    """CTG traces with the risk over time of the final model, one figure per example record.

    The final model was trained on every record, these included: the traces illustrate what a
    clinician would see, they are not evidence of performance (the OOF metrics are).
    """
    from stages.ctg.models.network import load_predictor
    from stages.ctg.serving.risk_over_time import alert_threshold, risk_over_time
    from stages.ctg.signal.wfdb_record import read_ctg_record

    predictor = load_predictor({"model_dir": str(root / CTG_MODEL_DIR)})
    min_minutes = float(predictor.config.get("min_input_minutes", 10))
    figs = {}
    for caption, record in examples.items():
        try:
            rec = read_ctg_record(root / CTU_UHB_RAW / record)
            t, risk = risk_over_time(predictor, rec.fhr_bpm, rec.uc, rec.fs_hz, 5.0, min_minutes)
        except Exception as exc:  # an illustration must not fail the evaluation
            log.warning("no trace figure for record %s: %s", record, exc)
            continue
        figs[f"trace_{record}.png"] = plots.ctg_risk_figure(
            rec.fhr_bpm, rec.uc, rec.fs_hz, t, risk, alert_threshold(predictor),
            f"record {record} ({caption}); risk of the final model, which saw this record",
        )  # fmt: skip
    return figs


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params("evaluate_ctg")
    root = project_root()
    oof = pd.read_csv(root / OOF_PREDICTIONS_CSV, dtype={"record": str})
    feats = pd.read_csv(root / FEATURES_CSV, dtype={"record": str})
    recs = pd.read_csv(root / RECORDS_CSV, dtype={"record": str})
    # The signal-loss reference score comes from records.csv under its own name (features.csv
    # may hold a column of the same name, which stays a baseline feature).
    ref = recs[["record", "signal_loss_frac"]].rename(columns={"signal_loss_frac": "_loss_ref"})
    table = oof.merge(feats, on="record", how="inner").merge(ref, on="record", how="left")
    if len(table) < len(oof):
        log.warning("%d OOF records have no features", len(oof) - len(table))
    y = table["label"].to_numpy(int)
    feature_cols = [
        c for c in feats.columns if c != "record" and pd.api.types.is_numeric_dtype(feats[c])
    ]
    scores = {
        "lstm": table["probability"].to_numpy(float),
        "baseline": baseline_oof(
            table[feature_cols],
            y,
            table["fold"].to_numpy(int),
            float(params["baseline_c"]),
            int(params["seed"]),
        ),
        "signal_loss": table["_loss_ref"].to_numpy(float),
    }
    thresholds = {}
    how = ""
    for name in ("lstm", "baseline"):
        thresholds[name], how = operating_threshold(params["operating_threshold"], y, scores[name])
    report = evaluate(
        table,
        scores,
        thresholds,
        list(params["ph_thresholds"]),
        int(params["n_bootstrap"]),
        int(params["seed"]),
    )
    report["n_records"] = int(len(table))
    report["n_features"] = len(feature_cols)
    report["threshold_rule"] = how
    figs = write_curves(root, table, scores, thresholds)
    examples = example_records(table, scores["lstm"], min(params["ph_thresholds"]))
    figs.update(trace_figures(root, examples))
    with tracking.run("ctg", "evaluate_ctg", params={"evaluate_ctg": params}, stage="evaluate_ctg"):
        tracking.log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float))})
        for name, fig in figs.items():
            tracking.log_figure(fig, f"figures/{name}")
            plots.save_figure(fig, root / EVALUATE_CTG_DIR / "figures" / name)
        tracking.log_artifact(root / EVALUATE_CTG_DIR, "evaluate_ctg")
    io.write_json(root / EVALUATE_CTG_REPORT, report)
    io.write_text(
        root / EVALUATE_CTG_DIR / "metrics.md",
        metrics_table(report, list(params["ph_thresholds"])) + "\n",
    )
    log.info(
        "LSTM AUC %.3f [%.3f, %.3f]; baseline AUC %.3f; signal loss AUC %.3f",
        report["lstm.auc"],
        report["lstm.auc_ci_low"],
        report["lstm.auc_ci_high"],
        report["baseline.auc"],
        report["signal_loss.auc"],
    )


if __name__ == "__main__":
    main()
