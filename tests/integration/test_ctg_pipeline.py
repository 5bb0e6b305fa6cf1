"""The real ``dvc repro evaluate_ctg``, then ``register_ctg`` and ``fetal promote``, on a toy
repository with a tiny synthetic mirror (one test: the register stage reuses what the first repro
trained and evaluated)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.cli import main as fetal
from stages.common.ml.paired import delong_test
from stages.common.params import load_params
from stages.common.registry import champion, tracking
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

    registered = run_dvc(toy_repo, "repro", "register_ctg").stdout
    assert "register_ctg" in ran_stages(registered), registered
    assert "train_ctg" not in ran_stages(registered)  # the network is reused, not retrained
    run_dvc(toy_repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    assert tracking.alias_version(NAME, "champion") is None  # registration moves nothing
    assert fetal(["promote", "--repo", str(toy_repo)]) == 0  # pushes, then decides
    check_registry(toy_repo, mirror)

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


def check_registry(repo: Path, mirror: Path) -> None:
    """Four families registered from evaluate_ctg's out-of-fold predictions with one input
    schema and a model card, the champion by the paired rule in registration order (the baseline
    first), raw records scored by each registered version through the verified loader."""
    import mlflow

    rows = json.loads((repo / "data/reports/register_ctg.json").read_text())["models"]
    assert [r["family"] for r in rows] == ["logistic", "lstm", "gbm", "hybrid"]
    assert [r["version"] for r in rows] == ["1", "2", "3", "4"]
    oof = pd.read_csv(repo / "data/reports/evaluate_ctg/oof_predictions.csv", dtype={"record": str})
    assert set(FAMILIES) <= set(oof.columns) and len(oof) == 12
    figures = json.loads((repo / "data/reports/evaluate_ctg.json").read_text())["families"]
    family = {r["family"]: r for r in rows}
    for f, r in family.items():  # each card quotes the figures the register report holds
        mv = tracking.client().get_model_version(NAME, r["version"])
        assert mv.tags["family"] == f and f"Family `{f}`" in mv.description
        for value in (r["value"], r["ci_low"], r["ci_high"]):
            assert f"{value:.4f}" in mv.description, (f, value)
        assert r["value"] == pytest.approx(figures[f]["auc"])
    schemas = {
        f: mlflow.models.get_model_info(f"models:/{NAME}/{r['version']}").signature.to_dict()
        for f, r in family.items()
    }
    assert all(s == schemas["lstm"] for s in schemas.values())  # inputs and outputs alike

    # The champion by the paired rule, replayed in registration order on the same records.
    y, best = oof["y"].to_numpy(int), None
    margin = float(load_params("register_ctg", repo / "params.yaml")["promote_margin"])
    for r in rows:
        f = r["family"]
        if best is not None:
            d = delong_test(y, oof[best].to_numpy(), oof[f].to_numpy())
            if not (d.difference >= margin and d.ci_low > 0):
                continue
        best = f
    assert tracking.alias_version(NAME, "champion") == family[best]["version"]
    assert champion.champion_history(NAME)[0]["to"] == "1"  # the baseline, the incumbent

    # Raw records in, through the verified path (no pickle), for every family.
    rec = read_ctg_record(mirror / "1001")
    frame = pd.DataFrame({"fhr_bpm": [rec.fhr_bpm.tolist()], "uc": [rec.uc.tolist()],
                          "fs_hz": [rec.fs_hz]})  # fmt: skip
    for r in rows:
        out = tracking.load_model(f"models:/{NAME}/{r['version']}").predict(frame)
        assert list(out.columns) == ["probability", "alert"] and 0 <= out["probability"][0] <= 1
