"""The real ``dvc repro evaluate_ctg`` (network, feature families, evaluation) on a toy repository
with a tiny synthetic mirror."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.common.registry import tracking
from stages.ctg.models.family_predictor import linear_proba
from stages.ctg.models.family_predictor import load_predictor as load_family
from stages.ctg.signal.wfdb_record import read_ctg_record
from tests.conftest import run_dvc, set_params
from tests.synth_ctg import make_ctg_mirror

pytestmark = pytest.mark.integration

TINY = {
    "preprocess_ctg": {"last_minutes": 30},
    "split_ctg": {"n_folds": 3},
    "train_ctg": {
        "window_minutes": 30,  # at most preprocess_ctg.last_minutes (an error otherwise)
        "epochs": 2,
        "patience": 1,
        "units": 4,
        "dense_units": 4,
        "conv_filters": 4,
        "batch_size": 8,
    },
    "evaluate_ctg": {"n_bootstrap": 50},
    "train_families_ctg": {"gbm": {"max_iter": 20, "learning_rate": 0.1, "max_leaf_nodes": 4,
                                   "min_samples_leaf": 2, "l2_regularization": 1.0}},
}  # fmt: skip
FAMILIES = {"lstm", "logistic", "gbm", "hybrid"}
NAME = "ctg-distress"


def ran_stages(output: str) -> set[str]:
    """Stage names DVC ran (``sources/dvc.yaml:source_ctg`` -> ``source_ctg``)."""
    return {s.rsplit(":", 1)[-1] for s in re.findall(r"Running stage '([^']+)'", output)}


def test_dvc_repro_evaluate_ctg(
    toy_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = make_ctg_mirror(tmp_path / "mirror", n_records=12, seed=2, duration_min=(35, 45))
    monkeypatch.setenv("FETAL_MIRROR", str(mirror.parent))
    set_params(toy_repo, TINY)

    first = run_dvc(toy_repo, "repro", "evaluate_ctg").stdout
    assert {"train_ctg", "evaluate_ctg", "preprocess_ctg"} <= ran_stages(first)

    reports = toy_repo / "data/reports"
    train = json.loads((reports / "train_ctg.json").read_text())
    assert 0.0 <= train["cv_auc"] <= 1.0 and set(train["fold"]) == {"0", "1", "2"}
    assert "decision" not in train and "total_s" not in train  # run facts: data/runs/
    run = json.loads((toy_repo / "data/runs/train_ctg.json").read_text())
    assert "decision" not in run  # the registry stage registers and decides, once
    oof = pd.read_csv(reports / "train_ctg/oof_predictions.csv", dtype={"record": str})
    assert list(oof.columns) == ["record", "fold", "label", "ph", "probability"]
    assert len(oof) == 12 and oof["probability"].between(0, 1).all()
    curves = pd.read_csv(reports / "train_ctg/learning_curves.csv")
    assert {"0", "1", "2", "final"} == set(curves["fold"].astype(str))
    assert (toy_repo / "data/models/ctg/model.keras").is_file()
    assert (
        json.loads((toy_repo / "data/models/ctg/preprocess.json").read_text())["preprocess_ctg"][
            "last_minutes"
        ]
        == 30
    )

    ev = json.loads((reports / "evaluate_ctg.json").read_text())
    for key in (
        "lstm.auc",
        "lstm.auc_ci_low",
        "lstm.auc_ci_high",
        "logistic.auc",
        "hybrid.auc",
        "lstm.ph705.auc",
        "lstm.sensitivity",
        "lstm.n_pos",
        "lstm.n_neg",
    ):
        assert key in ev
    assert ev["lstm.n_pos"] + ev["lstm.n_neg"] == 12
    assert ev["lstm.auc"] == pytest.approx(train["cv_auc"])
    for name in ("roc", "pr", "calibration", "confusion"):
        assert (reports / f"evaluate_ctg/{name}.csv").is_file()
        assert (reports / f"evaluate_ctg/figures/{name}.png").stat().st_size > 5000

    shown = run_dvc(toy_repo, "metrics", "show").stdout
    assert "lstm.auc" in shown and "cv_auc" in shown
    check_families(toy_repo, mirror, ev)

    # nothing new: only the always-changed source check runs, everything below is skipped
    again = run_dvc(toy_repo, "repro", "evaluate_ctg").stdout
    assert ran_stages(again) == {"source_ctg"}, again

    set_params(toy_repo, {"train_ctg": {"dropout": 0.1}})
    status = run_dvc(toy_repo, "status", "--with-deps", "evaluate_ctg").stdout
    assert "train_ctg:" in status and "modified:" in status, status
    for upstream in ("ingest_ctg:", "preprocess_ctg:", "split_ctg:", "featurize_ctg:"):
        assert upstream not in status, status
    third = run_dvc(toy_repo, "repro", "evaluate_ctg").stdout
    # the hybrid stacks the network: the families are refitted on the new network
    assert ran_stages(third) == {"source_ctg", "train_ctg", "train_families_ctg", "evaluate_ctg"}, (
        third
    )


def check_families(repo: Path, mirror: Path, evaluate: dict) -> None:
    """Every family evaluated once, from the training stages' out-of-fold predictions (the
    registry's contract), and each family's model folder scoring raw records with
    featurize_ctg's features; no registration before the registry stage."""
    report = json.loads((repo / "data/reports/train_families_ctg.json").read_text())
    assert set(report["families"]) == FAMILIES - {"lstm"}
    assert set(evaluate["families"]) == FAMILIES
    for f, s in evaluate["families"].items():
        assert set(s) == {"auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity",
                          "threshold", "n_pos", "n_neg"}  # fmt: skip
        assert s["auc_ci_low"] <= s["auc"] <= s["auc_ci_high"] and s["n_pos"] + s["n_neg"] == 12
        if f != "lstm":  # the stored alert threshold is the evaluated one
            assert s["threshold"] == pytest.approx(report["families"][f]["alert_threshold"])
            assert s["auc"] == pytest.approx(report["families"][f]["cv_auc"])
    assert evaluate["paired_vs_logistic"]["logistic"]["difference"] == 0.0
    oof = pd.read_csv(repo / "data/reports/evaluate_ctg/oof_predictions.csv", dtype={"record": str})
    assert list(oof.columns) == ["record", "fold", "y", "lstm", "logistic", "gbm", "hybrid"]
    lstm = pd.read_csv(repo / "data/reports/train_ctg/oof_predictions.csv", dtype={"record": str})
    assert list(oof["record"]) == list(lstm["record"]) and list(oof["fold"]) == list(lstm["fold"])
    assert np.allclose(oof["lstm"], lstm["probability"]) and (oof["y"] == lstm["label"]).all()
    assert tracking.alias_version(NAME, "champion") is None  # nothing registered yet

    # Raw records in, as for the network; the served features are featurize_ctg's.
    rec = read_ctg_record(mirror / "1001")
    frame = pd.DataFrame({"fhr_bpm": [rec.fhr_bpm.tolist()], "uc": [rec.uc.tolist()],
                          "fs_hz": [rec.fs_hz]})  # fmt: skip
    served = {
        f: load_family({"model_dir": str(repo / "data/models/ctg_families" / f)}).predict(frame)
        for f in ("logistic", "gbm", "hybrid")
    }
    for out in served.values():
        assert list(out.columns) == ["probability", "alert"] and 0 <= out["probability"][0] <= 1
    folder = repo / "data/models/ctg_families/logistic"
    config = json.loads((folder / "family.json").read_text())
    feats = pd.read_csv(repo / "data/processed/ctg/features.csv", dtype={"record": str})
    row = feats.set_index("record").loc[["1001"], config["columns"]].to_numpy(float)
    expected = linear_proba(config["scorer"], row)[0]
    assert served["logistic"]["probability"][0] == pytest.approx(expected)
