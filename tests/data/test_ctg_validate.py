"""Bad CTG input must give a named error or a quarantine entry; the rest of the run goes on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.common.io import read_json
from tests.conftest import ROOT
from tests.synth_ctg import make_ctg_mirror, synth_fhr, synth_uc, write_ctg_record, write_index

pytestmark = pytest.mark.data

N_GOOD = 10
BAD = {
    "2101": "unreadable: truncated",
    "2102": "wrong_sampling_rate",
    "2103": "unreadable: missing signal file",
    "2104": "too_much_signal_loss",
    "2105": "ph_missing_or_not_numeric",
}


def _project(tmp: Path, **validate: float) -> Path:
    """A tmp project: params.yaml (optionally changed) and an empty data/ tree."""
    tmp.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate_ctg"].update(validate)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp


def _bad_raw(raw: Path) -> None:
    """Good synthetic records plus one of each kind of bad input."""
    make_ctg_mirror(raw.parent, n_records=N_GOOD, seed=11, duration_min=(35, 45))
    rng = np.random.default_rng(5)
    n = 40 * 60 * 4
    fhr, uc = synth_fhr(n, 4, rng=rng), synth_uc(n, 4, [300, 600], rng)
    write_ctg_record(raw, "2101", fhr, uc)
    dat = raw / "2101.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 3])
    write_ctg_record(raw, "2102", np.repeat(fhr, 2), np.repeat(uc, 2), fs_hz=8)
    write_ctg_record(raw, "2103", fhr, uc)
    (raw / "2103.dat").unlink()
    write_ctg_record(raw, "2104", np.zeros(n), uc)
    write_ctg_record(raw, "2105", fhr, uc, ph="n/a")
    names = [str(1001 + i) for i in range(N_GOOD)] + sorted(BAD)
    write_index(raw, names)


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """validate_ctg then preprocess_ctg run on the bad data (tolerant max_fail_fraction)."""
    from stages.ctg.pipeline import preprocess, validate

    root = _project(tmp_path_factory.mktemp("ctg_bad"), max_fail_fraction=0.5)
    _bad_raw(root / "data" / "raw" / "ctu-uhb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FETAL_PROJECT_ROOT", str(root))
        validate.main()
        preprocess.main()
    return root


@pytest.mark.parametrize("record, reason", sorted(BAD.items()))
def test_each_bad_record_is_quarantined_by_name(validated: Path, record: str, reason: str) -> None:
    table = pd.read_csv(validated / "data/interim/ctg/validation.csv", dtype={"record": str})
    row = table.set_index("record").loc[record]
    assert not row["passed"]
    assert reason in row["reasons"], row["reasons"]
    quarantine = pd.read_csv(validated / "data/interim/ctg/quarantine.csv", dtype={"item": str})
    assert record in set(quarantine["item"])
    assert record in read_json(validated / "data/reports/validate_ctg.json")["quarantined"]


def test_good_records_pass_and_flow_downstream(validated: Path) -> None:
    report = read_json(validated / "data/reports/validate_ctg.json")
    assert report["n_records"] == N_GOOD + len(BAD)
    assert report["n_passed"] == N_GOOD and report["n_failed"] == len(BAD)
    assert report["failures_by_reason"]["unreadable"] == 2
    assert (validated / "data/runs/gx/ctg/index.html").is_file()  # Data Docs: untracked
    records = pd.read_csv(validated / "data/processed/ctg/records.csv", dtype={"record": str})
    assert len(records) == N_GOOD and not set(records["record"]) & set(BAD)
    pre = read_json(validated / "data/reports/preprocess_ctg.json")
    assert sorted(pre["excluded"]) == sorted(BAD)
    seq = np.load(validated / "data/processed/ctg/sequences.npz")
    assert seq["fhr_bpm"].shape[0] == N_GOOD


def test_too_many_failures_fail_the_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.ctg.pipeline import validate

    root = _project(tmp_path / "p", max_fail_fraction=0.1)
    _bad_raw(root / "data" / "raw" / "ctu-uhb")
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(root))
    with pytest.raises(SystemExit, match="5 of 15 records failed validation"):
        validate.main()
    # The reports are still written so the failure can be inspected.
    assert read_json(root / "data/reports/validate_ctg.json")["n_failed"] == 5


def test_empty_directory_gives_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages.ctg.pipeline import ingest, validate

    root = _project(tmp_path / "p")
    mirror = tmp_path / "mirror"
    (mirror / "ctu-uhb").mkdir(parents=True)
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(root))
    monkeypatch.setenv("FETAL_MIRROR", str(mirror))
    with pytest.raises(SystemExit, match="ingest_ctg failed: cannot read RECORDS"):
        ingest.main()
    (root / "data/raw/ctu-uhb").mkdir(parents=True, exist_ok=True)
    with pytest.raises(SystemExit, match="validate_ctg failed: no records to validate"):
        validate.main()
    shutil.rmtree(root / "data")


def test_run_expectations_maps_failures_to_row_ids(tmp_path: Path) -> None:
    from stages.common.intake.checks import gx_expectations, run_expectations

    e = gx_expectations()
    df = pd.DataFrame({"item": ["a", "b", "c"], "fs_hz": [4.0, 8.0, 4.0], "ph": [7.2, 7.3, None]})
    report = run_expectations(
        df,
        "toy",
        [
            e.ExpectColumnValuesToBeBetween(
                column="fs_hz", min_value=4, max_value=4, meta={"reason": "wrong_fs"}
            ),
            e.ExpectColumnValuesToNotBeNull(column="ph"),
            e.ExpectTableRowCountToBeBetween(min_value=10),
        ],
        id_column="item",
        docs_dir=tmp_path / "docs",
    )
    assert not report.success
    assert report.failures == {"b": ["wrong_fs"], "c": ["ph: expect_column_values_to_not_be_null"]}
    assert len(report.table_failures) == 1 and "row_count" in report.table_failures[0]
    assert (tmp_path / "docs" / "index.html").is_file()
    ok = run_expectations(
        df.iloc[:1], "toy_ok", [e.ExpectColumnValuesToNotBeNull(column="ph")], "item"
    )
    assert ok.success and ok.failures == {} and ok.docs_index is None
