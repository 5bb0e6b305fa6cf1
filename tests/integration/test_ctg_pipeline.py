"""The real ``dvc repro evaluate_ctg`` on a toy repository with a tiny synthetic mirror."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import run_dvc, set_params
from tests.synth_ctg import make_ctg_mirror

pytestmark = pytest.mark.integration

TINY = {
    "preprocess_ctg": {"last_minutes": 30},
    "split_ctg": {"n_folds": 3},
    "train_ctg": {
        "epochs": 2,
        "patience": 1,
        "units": 4,
        "dense_units": 4,
        "conv_filters": 4,
        "batch_size": 8,
    },
    "evaluate_ctg": {"n_bootstrap": 50},
}


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


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
    assert run["decision"]["promoted"] is True  # the first version becomes champion
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
        "baseline.auc",
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

    # nothing new: only the always-changed source check runs, everything below is skipped
    again = run_dvc(toy_repo, "repro", "evaluate_ctg").stdout
    assert ran_stages(again) == {"source_ctg"}, again

    set_params(toy_repo, {"train_ctg": {"dropout": 0.1}})
    status = run_dvc(toy_repo, "status", "--with-deps", "evaluate_ctg").stdout
    assert "train_ctg:" in status and "modified:" in status, status
    for upstream in ("ingest_ctg:", "preprocess_ctg:", "split_ctg:", "featurize_ctg:"):
        assert upstream not in status, status
    third = run_dvc(toy_repo, "repro", "evaluate_ctg").stdout
    assert ran_stages(third) == {"source_ctg", "train_ctg", "evaluate_ctg"}, third
