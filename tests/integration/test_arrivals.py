"""New data reaches the pipeline: the real ``dvc repro`` of the CTG data stages on a toy repository
as records arrive, change, disappear or arrive broken at the source; ultrasound arrivals through
the stages' main()s (source, ingest, validate, split_planes)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.common.intake.download import sha256_file
from stages.common.io import read_json
from tests.conftest import run_dvc, set_params, toy_ctg_source
from tests.integration.test_ctg_pipeline import ran_stages
from tests.synth_ctg import synth_record, write_ctg_record, write_index
from tests.synth_us import make_us_mirror

pytestmark = pytest.mark.integration

TRAIN_DATA = ["sequences.npz", "records.csv", "folds.csv"]


def _add_record(folder: Path, name: str, seed: int, fs_hz: float = 4.0) -> None:
    fhr, uc, ph = synth_record(np.random.default_rng(seed), seed % 2 == 0, 40)
    step = int(4 / fs_hz)
    write_ctg_record(folder, name, fhr[::step], uc[::step], ph=ph, fs_hz=fs_hz)


def _train_inputs_md5(repo: Path) -> dict[str, str]:
    """dvc.lock's md5 of train_ctg's data inputs (what decides whether it reruns)."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    outs = [o for s in ("preprocess_ctg", "split_ctg") for o in stages[s]["outs"]]
    return {o["path"]: o["md5"] for o in outs if Path(o["path"]).name in TRAIN_DATA}


@pytest.mark.slow
def test_ctg_arrivals_through_dvc_repro(
    toy_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = {
        "ingest_ctg": {"max_fail_fraction": 0.5},
        "validate_ctg": {"max_fail_fraction": 0.5},
        "preprocess_ctg": {"last_minutes": 30},
        "split_ctg": {"n_folds": 3},
    }
    mirror = toy_ctg_source(toy_repo, tmp_path, monkeypatch, 8, params)
    raw = toy_repo / "data/raw/ctu-uhb"
    processed = toy_repo / "data/processed/ctg"
    first = run_dvc(toy_repo, "repro", "split_ctg").stdout
    assert {"source_ctg", "ingest_ctg", "split_ctg"} <= ran_stages(first)
    listing = (toy_repo / "data/sources/ctu-uhb.json").read_text()
    assert str(mirror) not in listing and str(toy_repo) not in listing  # no paths inside
    assert read_json(toy_repo / "data/reports/ingest_ctg.json")["arrivals"]["n_added"] == 8
    folds_before = pd.read_csv(processed / "folds.csv", dtype={"record": str})

    # (e) Nothing new: only the source check runs; dvc.lock and git status stay as they were.
    lock, status = (toy_repo / "dvc.lock").read_bytes(), _git_status(toy_repo)
    assert ran_stages(run_dvc(toy_repo, "repro", "split_ctg").stdout) == {"source_ctg"}
    assert (toy_repo / "dvc.lock").read_bytes() == lock and _git_status(toy_repo) == status

    # (a) + (c) Two records arrive, one changes under its name, one is withdrawn.
    _add_record(mirror, "1009", 9)
    _add_record(mirror, "1010", 10)
    _add_record(mirror, "1003", 33)  # same name, other content
    for ext in (".hea", ".dat"):
        (mirror / f"1005{ext}").unlink()
    write_index(mirror)
    untouched = {p.name: p.stat().st_mtime_ns for p in raw.glob("100[1246]*")}
    run_dvc(toy_repo, "repro", "-s", "sources/dvc.yaml:source_ctg")
    status_out = run_dvc(toy_repo, "status", "ingest_ctg").stdout
    assert "data/sources/ctu-uhb.json" in status_out and "modified" in status_out
    assert {"ingest_ctg", "split_ctg"} <= ran_stages(run_dvc(toy_repo, "repro", "split_ctg").stdout)
    arrivals = read_json(toy_repo / "data/reports/ingest_ctg.json")["arrivals"]
    assert arrivals["added"] == ["1009", "1010"] and arrivals["n_added"] == 2
    assert arrivals["changed"] == ["1003"] and arrivals["removed"] == ["1005"]
    assert arrivals["previous_version"] != arrivals["version"]
    run = read_json(toy_repo / "data/runs/ingest_ctg.json")
    assert run["n_files_skipped"] == 2 * 6  # the unchanged records were not fetched again
    assert {p.name: p.stat().st_mtime_ns for p in raw.glob("100[1246]*")} == untouched
    assert not (raw / "1005.dat").exists() and "1005" not in (raw / "RECORDS").read_text()
    folds = pd.read_csv(processed / "folds.csv", dtype={"record": str})
    kept = folds_before[~folds_before["record"].isin(["1005"])].merge(folds, on="record")
    assert len(kept) == len(folds_before) - 1 and (kept["fold_x"] == kept["fold_y"]).all()
    assert {"1009", "1010"} <= set(folds["record"]) and "1005" not in set(folds["record"])

    # (d) Only bad arrivals: 2 Hz, a truncated .dat (published as such), a checksum mismatch.
    _add_record(mirror, "1011", 11, fs_hz=2.0)
    _add_record(mirror, "1012", 12)
    dat = mirror / "1012.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 3])
    _add_record(mirror, "1013", 13)
    write_index(mirror)
    (mirror / "1013.dat").write_bytes(b"\0" * 100)  # after its checksum was published
    before = {name: sha256_file(processed / name) for name in TRAIN_DATA}
    lock_before = _train_inputs_md5(toy_repo)
    out = run_dvc(toy_repo, "repro", "split_ctg").stdout
    assert "validate_ctg" in ran_stages(out) and "split_ctg" not in ran_stages(out)
    assert {name: sha256_file(processed / name) for name in TRAIN_DATA} == before
    assert _train_inputs_md5(toy_repo) == lock_before and len(lock_before) == 3
    report = read_json(toy_repo / "data/reports/ingest_ctg.json")
    assert report["quarantined_records"] == ["1013"]
    assert "checksum mismatch for 1013.dat" in report["quarantine_reasons"]["1013"]
    assert str(mirror) not in json.dumps(report)
    validation = pd.read_csv(toy_repo / "data/interim/ctg/validation.csv", dtype={"record": str})
    failed = validation.set_index("record").loc[["1011", "1012"]]
    assert not failed["passed"].any()
    assert "wrong_sampling_rate" in failed.loc["1011", "reasons"]
    assert "unreadable" in failed.loc["1012", "reasons"]
    quarantine = pd.read_csv(toy_repo / "data/interim/ctg/quarantine.csv", dtype={"item": str})
    assert {"1011", "1012"} <= set(quarantine["item"])
    # train_ctg's inputs are unchanged, so DVC leaves the model (and the champion) alone.
    assert "changed" not in run_dvc(toy_repo, "status", "split_ctg").stdout


def _git_status(repo: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def _us_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: Path) -> Path:
    from tests.conftest import ROOT

    proj = tmp_path / "proj"
    (proj / "data/processed/us").mkdir(parents=True)  # segmentation.csv's folder (a stand-in)
    shutil.copy2(ROOT / "params.yaml", proj / "params.yaml")
    set_params(
        proj, {"validate_us": {"max_fail_fraction": 0.5}, "split_planes_us": {"val_fraction": 0.5}}
    )
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(proj))
    monkeypatch.setenv("FETAL_MIRROR", str(mirror))
    monkeypatch.setenv("FETAL_LANDING", str(tmp_path / "landing"))
    return proj


def _us_stages(proj: Path) -> pd.DataFrame:
    from stages.ultrasound.pipeline import ingest, source, split_planes, validate

    source.main()
    ingest.main()
    validate.main()
    val = pd.read_csv(proj / "data/interim/us/validation.csv")
    seg = val[["dataset", "image"]].assign(ok=True)  # stands in for segment_us
    seg.to_csv(proj / "data/processed/us/segmentation.csv", index=False)
    split_planes.main()
    return pd.read_csv(proj / "data/processed/us/planes_manifest.csv")


def _new_patient(name: str) -> str:
    """``Patient00003_...`` -> ``Patient00503_...``: a new patient, under FETAL_PLANES_DB's
    naming (the name pattern of ``ingest_us`` refuses other names)."""
    number = int(name[len("Patient") : len("Patient") + 5])
    return f"Patient{number + 500:05d}{name[len('Patient') + 5 :]}"


def test_us_arrivals_at_source_and_landing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages.cli import main as fetal

    mirror = make_us_mirror(tmp_path / "mirror", n_per_plane=2, n_hc18=2, seed=6, n_missing=0)
    spare = make_us_mirror(tmp_path / "spare", n_per_plane=1, n_hc18=1, seed=7, n_missing=0)
    proj = _us_project(tmp_path, monkeypatch, mirror)
    fp = mirror / "fetal_planes"
    manifest_before = _us_stages(proj).set_index("image")
    listing = (proj / "data/sources/us.json").read_text()
    assert str(mirror) not in listing and str(tmp_path) not in listing

    # Nothing new: the listing is not rewritten.
    from stages.ultrasound.pipeline import source

    mtime = (proj / "data/sources/us.json").stat().st_mtime_ns
    source.main()
    assert (proj / "data/sources/us.json").stat().st_mtime_ns == mtime

    # At the source: two new images with their label rows (new patients), one image withdrawn,
    # one image changed under its name. Through the landing folder: one image and its row.
    spare_fp = spare / "fetal_planes"
    spare_rows = pd.read_csv(spare_fp / "FETAL_PLANES_DB_data.csv", dtype=str)
    spare_rows["Patient_num"] = (spare_rows["Patient_num"].astype(int) + 500).astype(str)
    spare_rows["Image_name"] = spare_rows["Image_name"].map(_new_patient)
    for old in sorted(spare_fp.glob("images/*.png")):
        old.rename(old.with_name(_new_patient(old.stem) + old.suffix))
    new_imgs = sorted((spare_fp / "images").glob("*.png"))
    for img in new_imgs[:2]:
        shutil.copy2(img, fp / "images" / img.name)
    table = pd.read_csv(fp / "FETAL_PLANES_DB_data.csv", dtype=str)
    table = pd.concat(
        [table, spare_rows[spare_rows["Image_name"].isin([p.stem for p in new_imgs[:2]])]]
    )
    table.to_csv(fp / "FETAL_PLANES_DB_data.csv", index=False)
    images = sorted((fp / "images").glob("Patient*.png"))
    images[0].unlink()
    images[1].write_bytes(new_imgs[3].read_bytes())
    spare_rows[spare_rows["Image_name"] == new_imgs[2].stem].to_csv(
        tmp_path / "rows.csv", index=False
    )
    assert fetal(["add-data", "us", str(new_imgs[2]), "--labels", str(tmp_path / "rows.csv")]) == 0

    manifest = _us_stages(proj).set_index("image")
    summary = read_json(proj / "data/reports/ingest_us.json")["fetal_planes"]
    assert summary["added"] == sorted(p.name for p in new_imgs[:3])
    assert summary["removed"] == [images[0].name]
    assert summary["changed"] == sorted([images[1].name, "FETAL_PLANES_DB_data.csv"])
    assert read_json(proj / "data/reports/ingest_us.json")["hc18"]["n_added"] == 0
    raw = proj / "data/raw/fetal_planes"
    assert (raw / "images" / new_imgs[2].name).is_file() and not (
        raw / "images" / images[0].name
    ).exists()
    assert {p.stem for p in new_imgs[:3]} <= set(manifest.index)
    common = manifest_before.index.intersection(manifest.index)
    assert len(common) >= len(manifest_before) - 1
    assert (manifest_before.loc[common, "split"] == manifest.loc[common, "split"]).all()
