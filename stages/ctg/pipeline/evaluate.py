"""Stage ``evaluate_ctg``: every family of ``ctg-distress`` evaluated out of fold, side by side.

Every number comes from out-of-fold (OOF) probabilities, record-level, on ``split_ctg``'s folds:
the network's from ``train_ctg``, the feature families' (logistic baseline, trees, hybrid) from
``train_families_ctg``; nothing is refitted here. The AUC has a percentile bootstrap 95 %
interval. Thresholded metrics use the operating threshold of ``params.yaml``: ``youden`` picks it
on the OOF probabilities themselves (optimistic for sensitivity/specificity; the report says so)
or a fixed probability. Metrics are repeated at the training label (``preprocess_ctg.ph_threshold``)
and at each of ``extra_ph_thresholds`` with the same probabilities and thresholds; keys of the
latter carry a ``ph705``-style prefix. Each family is compared with the logistic baseline on the
same records (DeLong). The signal-loss fraction alone is reported as a reference predictor.

Outputs: ``evaluate_ctg.json`` (flat ``{family}.{metric}`` keys, a ``families`` block at the
training label and a ``paired_vs_logistic`` block), the merged OOF predictions
(``record, fold, y`` and one column per family: what the registry stage reads), the metrics
table, the DVC plots of the network and the figures.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common import io
from stages.common.ml import metrics as M
from stages.common.ml import plots
from stages.common.ml.paired import delong_test
from stages.common.params import project_root
from stages.common.registry import tracking
from stages.common.settings import load_settings, settings
from stages.ctg.models.families import BASELINE
from stages.ctg.paths import (
    CTG_MODEL_DIR,
    CTU_UHB_RAW,
    EVALUATE_CTG_DIR,
    EVALUATE_CTG_REPORT,
    EVALUATE_OOF_CSV,
    FAMILIES_OOF_CSV,
    OOF_PREDICTIONS_CSV,
    RECORDS_CSV,
)
from stages.ctg.signal.settings import PreprocessCtg

log = logging.getLogger(__name__)

STAGE = "evaluate_ctg"
FAMILIES = ("lstm", "logistic", "gbm", "hybrid")  # lstm: train_ctg; the others: train_families
REFERENCE = "signal_loss"  # the FHR signal-loss fraction alone: AUC only
# Thresholded metrics copied into the report (counts tp/fp/... go to the confusion CSV).
REPORTED = (
    "auc", "sensitivity", "specificity", "balanced_accuracy", "precision", "f1", "n_pos", "n_neg",
)  # fmt: skip
# The registry's contract: the families block holds exactly these per family.
FAMILY_KEYS = (
    "auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity", "threshold", "n_pos", "n_neg",
)  # fmt: skip


@settings
class EvaluateCtg:
    """``evaluate_ctg``.

    Attributes
    ----------
    operating_threshold
        ``youden`` (chosen on the out-of-fold probabilities) or a fixed probability.
    extra_ph_thresholds
        pH cut-offs evaluated besides the training label (``preprocess_ctg.ph_threshold``).
    n_bootstrap
        Bootstrap resamples of the 95 % intervals.
    seed
        Bootstrap seed.
    """

    operating_threshold: float | str
    extra_ph_thresholds: tuple[float, ...]
    n_bootstrap: int
    seed: int


def load_table(root: Path) -> pd.DataFrame:
    """``record, fold, label, ph``, one probability column per family and ``signal_loss``.

    Raises SystemExit when the network's and the families' predictions disagree on the records
    or their folds (an output older than the other: ``dvc repro`` rebuilds it).
    """
    lstm = pd.read_csv(root / OOF_PREDICTIONS_CSV, dtype={"record": str})
    fams = pd.read_csv(root / FAMILIES_OOF_CSV, dtype={"record": str})
    # train_ctg's row order kept: the bootstrap resamples rows by position
    table = lstm.rename(columns={"probability": "lstm"}).merge(
        fams, on=["record", "fold", "label", "ph"], how="left", indicator=True
    )
    mismatch = (table.pop("_merge") != "both").any() or len(fams) != len(table)
    if mismatch or table[list(FAMILIES)].isna().any().any():
        raise SystemExit(
            f"{STAGE} failed: {OOF_PREDICTIONS_CSV} and {FAMILIES_OOF_CSV} do not hold the same "
            f"records in the same folds: run dvc repro"
        )
    recs = pd.read_csv(root / RECORDS_CSV, dtype={"record": str})
    # records.csv's signal-loss fraction, under its own name (features have a column of that name)
    ref = recs[["record", "signal_loss_frac"]].rename(columns={"signal_loss_frac": REFERENCE})
    return table.merge(ref, on="record", how="left")


def operating_threshold(setting: float | str, y: np.ndarray, prob: np.ndarray) -> tuple[float, str]:
    """(threshold, how it was chosen) from the ``operating_threshold`` setting."""
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


def labels_at(table: pd.DataFrame, ph_thresholds: list[float]) -> dict[float, np.ndarray]:
    """pH threshold -> labels: the first is the training label (``label``), the others pH < t."""
    ph = table["ph"].to_numpy(float)
    first, *others = ph_thresholds
    return {first: table["label"].to_numpy(int), **{t: (ph < t).astype(int) for t in others}}


def evaluate(
    labels: Mapping[float, np.ndarray],
    scores: Mapping[str, np.ndarray],
    thresholds: Mapping[str, float],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """Flat metrics ``{model}.{metric}`` (first pH) and ``{model}.{phNNN}.{metric}`` (others);
    a score without an operating threshold (the reference) gets its AUC only."""
    out: dict[str, Any] = {}
    for i, (ph_t, y) in enumerate(labels.items()):
        for name, prob in scores.items():
            prefix = name if i == 0 else f"{name}.{ph_key(ph_t)}"
            ok = ~np.isnan(prob)
            m = M.binary_metrics(y[ok], prob[ok], thresholds.get(name, 0.5))
            for k in REPORTED if name in thresholds else ("auc",):
                out[f"{prefix}.{k}"] = m[k]
            lo, hi = M.bootstrap_auc_ci(y[ok], prob[ok], n_bootstrap, seed)
            out[f"{prefix}.auc_ci_low"], out[f"{prefix}.auc_ci_high"] = lo, hi
            if name in thresholds:
                out[f"{prefix}.threshold"] = thresholds[name]
    return out


def families_block(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each family's figures at the training label (:data:`FAMILY_KEYS`), from the flat report."""
    return {f: {k: report[f"{f}.{k}"] for k in FAMILY_KEYS} for f in FAMILIES}


def paired_vs_baseline(y: np.ndarray, scores: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """family -> DeLong's paired AUC difference to the logistic baseline on the same records."""
    out = {}
    for name in FAMILIES:
        d = delong_test(y, scores[BASELINE], scores[name])
        out[name] = {"difference": d.difference, "ci_low": d.ci_low, "ci_high": d.ci_high,
                     "p_value": d.p_value}  # fmt: skip
    return out


def metrics_table(report: Mapping[str, Any], ph_thresholds: list[float]) -> str:
    """The report as a markdown table: one row per model and pH threshold."""
    cols = ["sensitivity", "specificity", "balanced_accuracy", "precision", "f1"]
    lines = [
        "| model | label | AUC [95% CI] | sens. | spec. | bal. acc. | precision | F1 | pos/neg |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, ph in enumerate(ph_thresholds):
        for name in (*FAMILIES, REFERENCE):
            key = name if i == 0 else f"{name}.{ph_key(ph)}"
            auc_txt = (
                f"{report[f'{key}.auc']:.3f} [{report[f'{key}.auc_ci_low']:.3f}, "
                f"{report[f'{key}.auc_ci_high']:.3f}]"
            )
            cells = [f"{report[f'{key}.{c}']:.3f}" if f"{key}.{c}" in report else "" for c in cols]
            balance = (
                f"{report[f'{key}.n_pos']}/{report[f'{key}.n_neg']}"
                if f"{key}.n_neg" in report
                else ""
            )
            lines.append(
                f"| {name} | pH < {ph:.2f} | {auc_txt} | " + " | ".join(cells) + f" | {balance} |"
            )
    return "\n".join(lines)


def write_plots(root: Path, table: pd.DataFrame, prob: np.ndarray, threshold: float) -> None:
    """The DVC plot CSVs of the network: ROC, precision-recall, calibration, confusion."""
    y = table["label"].to_numpy(int)
    folder = root / EVALUATE_CTG_DIR
    io.write_csv(folder / "roc.csv", pd.DataFrame(M.roc_table(y, prob)))
    io.write_csv(folder / "pr.csv", pd.DataFrame(M.pr_table(y, prob)))
    io.write_csv(folder / "calibration.csv", pd.DataFrame(M.calibration_table(y, prob)))
    names = np.array(["normal", "acidemic"])
    pred = (prob >= threshold).astype(int)
    io.write_csv(
        folder / "confusion.csv",
        pd.DataFrame({"record": table["record"], "actual": names[y], "predicted": names[pred]}),
    )


def curve_figures(
    y: np.ndarray, scores: Mapping[str, np.ndarray], lstm_threshold: float
) -> dict[str, Any]:
    """ROC, precision-recall and calibration of every score, the network's confusion matrix."""
    labels = {n: f"{n} (AUC {M.auc(y, p):.3f})" for n, p in scores.items()}
    pred = (scores["lstm"] >= lstm_threshold).astype(int)
    return {
        "roc.png": plots.roc_figure(
            {labels[n]: M.roc_table(y, p) for n, p in scores.items()}, "ROC, out-of-fold"
        ),
        "pr.png": plots.pr_figure(
            {labels[n]: M.pr_table(y, p) for n, p in scores.items()},
            float(y.mean()),
            "Precision-recall, out-of-fold",
        ),
        "calibration.png": plots.calibration_figure(
            {n: M.calibration_table(y, p) for n, p in scores.items() if n != REFERENCE}
        ),
        "confusion.png": plots.confusion_figure(
            M.confusion_matrix(y, pred, 2),
            ["normal", "acidemic"],
            f"LSTM at threshold {lstm_threshold:.3f}",
        ),
    }


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
    """CTG traces with the risk over time of the final network, one figure per example record.

    The final model was trained on every record, these included: the traces illustrate what a
    clinician would see, they are not evidence of performance (the OOF metrics are).
    """
    from stages.ctg.models.network import load_predictor
    from stages.ctg.serving.risk_over_time import risk_over_time
    from stages.ctg.signal.wfdb_record import read_ctg_record

    predictor = load_predictor({"model_dir": str(root / CTG_MODEL_DIR)})
    figs = {}
    for caption, record in examples.items():
        try:
            rec = read_ctg_record(root / CTU_UHB_RAW / record)
            t, risk = risk_over_time(
                predictor, rec.fhr_bpm, rec.uc, rec.fs_hz, 5.0, predictor.min_input_minutes
            )
        except Exception as exc:  # an illustration must not fail the evaluation
            log.warning("no trace figure for record %s: %s", record, exc)
            continue
        figs[f"trace_{record}.png"] = plots.ctg_risk_figure(
            rec.fhr_bpm, rec.uc, rec.fs_hz, t, risk, predictor.threshold,
            f"record {record} ({caption}); risk of the final model, which saw this record",
        )  # fmt: skip
    return figs


def build_report(
    table: pd.DataFrame, ev: EvaluateCtg, ph_thresholds: list[float]
) -> tuple[dict[str, Any], dict[str, float]]:
    """The metrics file (flat keys, ``families``, ``paired_vs_logistic``) and the thresholds."""
    scores = {name: table[name].to_numpy(float) for name in (*FAMILIES, REFERENCE)}
    y = table["label"].to_numpy(int)
    chosen = {
        name: operating_threshold(ev.operating_threshold, y, scores[name]) for name in FAMILIES
    }
    thresholds = {name: t for name, (t, _) in chosen.items()}
    labels = labels_at(table, ph_thresholds)
    report = evaluate(labels, scores, thresholds, ev.n_bootstrap, ev.seed)
    report["n_records"] = int(len(table))
    report["threshold_rule"] = chosen["lstm"][1]
    report["families"] = families_block(report)
    report[f"paired_vs_{BASELINE}"] = paired_vs_baseline(y, scores)
    return report, thresholds


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ev = load_settings(EvaluateCtg, STAGE)
    ph_label = load_settings(PreprocessCtg, "preprocess_ctg").ph_threshold
    ph_thresholds = [ph_label, *ev.extra_ph_thresholds]
    root = project_root()
    table = load_table(root)
    report, thresholds = build_report(table, ev, ph_thresholds)
    oof = table[["record", "fold", "label", *FAMILIES]].rename(columns={"label": "y"})
    io.write_csv(root / EVALUATE_OOF_CSV, oof)
    write_plots(root, table, table["lstm"].to_numpy(float), thresholds["lstm"])
    scores = {name: table[name].to_numpy(float) for name in (*FAMILIES, REFERENCE)}
    figs = curve_figures(table["label"].to_numpy(int), scores, thresholds["lstm"])
    figs |= trace_figures(root, example_records(table, scores["lstm"], min(ph_thresholds)))
    with tracking.run("ctg", STAGE, params={STAGE: asdict(ev)}, stage=STAGE):
        tracking.log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float))})
        for name, fig in figs.items():
            tracking.log_figure(fig, f"figures/{name}")
            plots.save_figure(fig, root / EVALUATE_CTG_DIR / "figures" / name)
        tracking.log_artifact(root / EVALUATE_CTG_DIR, STAGE)
    io.write_json(root / EVALUATE_CTG_REPORT, report)
    io.write_text(
        root / EVALUATE_CTG_DIR / "metrics.md", metrics_table(report, ph_thresholds) + "\n"
    )
    for name in (*FAMILIES, REFERENCE):
        log.info("%-11s AUC %.3f [%.3f, %.3f]", name, report[f"{name}.auc"],
                 report[f"{name}.auc_ci_low"], report[f"{name}.auc_ci_high"])  # fmt: skip


if __name__ == "__main__":
    main()
