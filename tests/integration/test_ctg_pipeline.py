"""The real ``dvc repro evaluate_ctg`` and ``train_families_ctg`` on a toy repository with a tiny
synthetic mirror (one test: the families reuse the network the first repro trained)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.common.ml.paired import delong_test
from stages.common.params import load_params
from stages.common.registry import tracking
from stages.ctg.models.family_predictor import linear_proba
from stages.ctg.signal.wfdb_record import read_ctg_record
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
    assert "decision" not in run  # train_families_ctg registers and decides, once
    assert tracking.alias_version(NAME, "champion") is None
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

    families = run_dvc(toy_repo, "repro", "train_families_ctg").stdout
    assert ran_stages(families) == {"source_ctg", "train_families_ctg"}, families
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
    assert ran_stages(third) == {"source_ctg", "train_ctg", "evaluate_ctg"}, third


def check_families(repo: Path, mirror: Path, evaluate: dict) -> None:
    """Four families registered with one input schema and a model card, the champion by the
    paired rule, raw records scored by each pyfunc with featurize_ctg's features."""
    import mlflow

    report = json.loads((repo / "data/reports/train_families_ctg.json").read_text())
    assert set(report["families"]) == FAMILIES
    for s in report["families"].values():
        assert s["auc_ci_low"] <= s["cv_auc"] <= s["auc_ci_high"] and s["n_records"] == 12
        assert 0 <= s["sensitivity"] <= 1 and 0 <= s["specificity"] <= 1
    assert report["families"]["logistic"]["vs_logistic"]["difference"] == 0.0
    # the logistic family is evaluate_ctg's baseline: same model, same folds
    assert report["families"]["logistic"]["cv_auc"] == pytest.approx(evaluate["baseline.auc"])
    oof = pd.read_csv(
        repo / "data/reports/train_families_ctg/oof_predictions.csv", dtype={"record": str}
    )
    lstm = pd.read_csv(repo / "data/reports/train_ctg/oof_predictions.csv", dtype={"record": str})
    assert list(oof["record"]) == list(lstm["record"]) and list(oof["fold"]) == list(lstm["fold"])
    assert np.allclose(oof["lstm"], lstm["probability"])

    client = tracking.client()
    versions = sorted(client.search_model_versions(f"name='{NAME}'"), key=lambda m: int(m.version))
    family = {mv.tags["family"]: mv for mv in versions}
    assert set(family) == FAMILIES and len(versions) == 4
    # the baseline registers first: on an empty registry it is the incumbent
    assert versions[0].tags["family"] == "logistic"
    assert versions[0].tags["promotion_decision"] == "promoted"
    schemas = {
        f: mlflow.models.get_model_info(f"models:/{NAME}/{mv.version}").signature.to_dict()
        for f, mv in family.items()
    }
    assert all(s == schemas["lstm"] for s in schemas.values())  # inputs and outputs alike
    for f, mv in family.items():  # each card quotes the figures the stage's report holds
        s = report["families"][f]
        assert f"Family `{f}`" in mv.description and "cv_auc" in mv.description
        for value in (s["cv_auc"], s["auc_ci_low"], s["auc_ci_high"]):
            assert f"{value:.4f}" in mv.description, (f, value)
        assert f"{s['n_pos']} acidaemic / {s['n_records'] - s['n_pos']} not" in mv.description

    # The champion by the paired rule, replayed in registration order on the same records.
    y, champion = oof["label"].to_numpy(int), None
    margin = float(load_params("train_families_ctg", repo / "params.yaml")["promote_margin"])
    for mv in versions:
        f = mv.tags["family"]
        if champion is None:
            promote = True
        else:
            d = delong_test(y, oof[champion].to_numpy(), oof[f].to_numpy())
            promote = d.difference >= margin and d.ci_low > 0
        assert mv.tags["promotion_decision"] == ("promoted" if promote else "rejected"), f
        champion = f if promote else champion
    assert tracking.alias_version(NAME, "champion") == str(family[champion].version)

    # Raw records in, as for the network; the served features are featurize_ctg's.
    rec = read_ctg_record(mirror / "1001")
    frame = pd.DataFrame({"fhr_bpm": [rec.fhr_bpm.tolist()], "uc": [rec.uc.tolist()],
                          "fs_hz": [rec.fs_hz]})  # fmt: skip
    served = {
        f: tracking.load_model(f"models:/{NAME}/{family[f].version}").predict(frame)
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
