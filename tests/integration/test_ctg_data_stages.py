"""Each CTG data stage's main() in order on a tmp project: synthetic mirror, then the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.common.intake.download import sha256_file
from stages.common.io import read_json
from tests.conftest import ROOT, shared_mirror
from tests.synth_ctg import make_ctg_mirror

pytestmark = pytest.mark.integration


def _project(tmp: Path, n_folds: int = 3) -> Path:
    """A project folder with the real params; a dozen records need fewer than 5 hashed folds."""
    tmp.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["split_ctg"]["n_folds"] = n_folds
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp


def _run(*names: str) -> None:
    import importlib

    for name in names:
        importlib.import_module(f"stages.ctg.pipeline.{name}").main()


def test_data_stages_on_synthetic_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = make_ctg_mirror(tmp_path / "mirror", n_records=12, seed=1, acidemic_fraction=0.5)
    root = _project(tmp_path / "project")
    monkeypatch.setenv("FETAL_MIRROR", str(mirror.parent))
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(root))
    _run("ingest", "validate", "preprocess", "split", "featurize")
    params = yaml.safe_load((root / "params.yaml").read_text())

    raw = root / "data/raw/ctu-uhb"
    ingest = read_json(root / "data/reports/ingest_ctg.json")
    assert ingest["n_records"] == 12 and ingest["quarantined_records"] == []
    # where the files came from and how long it took: the untracked run report, not the output
    run = read_json(root / "data/runs/ingest_ctg.json")
    assert run["source"] == str(mirror) and run["seconds"] >= 0
    assert not {"source", "seconds", "bytes_transferred"} & set(ingest)
    assert sha256_file(raw / "1007.dat") == sha256_file(mirror / "1007.dat")

    validation = pd.read_csv(root / "data/interim/ctg/validation.csv", dtype={"record": str})
    assert validation["passed"].all() and set(validation["fs_hz"]) == {4.0}
    assert (root / "data/runs/gx/ctg/index.html").is_file()

    seq = np.load(root / "data/processed/ctg/sequences.npz")
    n_t = params["preprocess_ctg"]["last_minutes"] * 60 * params["preprocess_ctg"]["fs_out_hz"]
    assert seq["fhr_bpm"].shape == seq["uc"].shape == (12, n_t)
    assert seq["fhr_bpm"].dtype == np.float32 and float(seq["fs_hz"]) == 1.0
    finite = seq["fhr_bpm"][np.isfinite(seq["fhr_bpm"])]
    assert 50 <= finite.min() and finite.max() <= 245
    records = pd.read_csv(root / "data/processed/ctg/records.csv", dtype={"record": str})
    assert list(records["record"]) == list(seq["records"])
    np.testing.assert_array_equal(records["label"], (records["ph"] < 7.15).astype(int))
    assert records["label"].sum() == 6
    # Records shorter than last_minutes are NaN-padded on the left.
    short = records["duration_min"] < params["preprocess_ctg"]["last_minutes"]
    assert np.isnan(seq["fhr_bpm"][short.to_numpy(), :60]).all()

    folds = pd.read_csv(root / "data/processed/ctg/folds.csv", dtype={"record": str})
    assert sorted(folds["record"]) == sorted(records["record"])
    assert set(folds["fold"]) == set(range(params["split_ctg"]["n_folds"]))

    features = pd.read_csv(root / "data/processed/ctg/features.csv", dtype={"record": str})
    assert len(features) == 12 and features.shape[1] >= 18
    merged = features.merge(records[["record", "label"]])
    acid, normal = merged[merged["label"] == 1], merged[merged["label"] == 0]
    # The synthetic acidemic records have late decelerations and low variability.
    assert acid["late_decel_per_hour"].mean() > normal["late_decel_per_hour"].mean() + 3
    assert acid["stv_ms"].mean() < normal["stv_ms"].mean()
    assert abs(features["baseline_bpm"] - 145).max() < 25


@pytest.mark.mirror
@pytest.mark.slow
def test_ingest_validate_preprocess_real_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = shared_mirror("ctu-uhb")
    root = _project(tmp_path / "project", n_folds=5)
    monkeypatch.setenv("FETAL_MIRROR", str(mirror.parent))
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(root))
    _run("ingest", "validate", "preprocess")
    assert read_json(root / "data/reports/ingest_ctg.json")["n_records"] == 452
    report = read_json(root / "data/reports/validate_ctg.json")
    assert report["n_records"] == 452 and report["n_failed"] <= 45
    records = pd.read_csv(root / "data/processed/ctg/records.csv", dtype={"record": str})
    assert len(records) == report["n_passed"]
    if report["n_passed"] == 452:  # README: pH < 7.15 in 86 of the 452 records
        assert records["label"].sum() == 86
    assert records["duration_min"].between(60, 91).all()
    assert read_json(root / "data/runs/preprocess_ctg.json")["cpu_seconds"] < 5.0


@pytest.mark.slow
def test_dvc_repro_ctg_data_stages_on_toy_repo(
    toy_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dvc.yaml blocks agree with what the stages read and write: repro, then nothing to do."""
    from tests.conftest import run_dvc, set_params, toy_ctg_source

    params = {"ingest_ctg": {"max_records": 0}, "split_ctg": {"n_folds": 3}}
    toy_ctg_source(toy_repo, tmp_path, monkeypatch, 10, params)
    run_dvc(toy_repo, "repro", "split_ctg", "featurize_ctg")
    for out in ["sequences.npz", "records.csv", "folds.csv", "features.csv"]:
        assert (toy_repo / "data/processed/ctg" / out).is_file()
    assert (toy_repo / "data/interim/ctg/quarantine.csv").is_file()
    status = run_dvc(toy_repo, "status", "split_ctg", "featurize_ctg").stdout
    assert "changed" not in status
    # A changed cleaning parameter invalidates featurize (it reads preprocess_ctg cleaning keys).
    set_params(toy_repo, {"preprocess_ctg": {"max_gap_s": 10}})
    status = run_dvc(toy_repo, "status", "featurize_ctg").stdout
    assert "featurize_ctg" in status and "preprocess_ctg.max_gap_s" in status
