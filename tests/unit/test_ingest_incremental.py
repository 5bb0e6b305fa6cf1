"""ingest_ctg against a changing source folder: what is re-fetched, kept, dropped and reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.ctg.pipeline.ingest import run_ingest
from tests.synth_ctg import (
    make_ctg_mirror,
    sha256_file,
    synth_record,
    write_ctg_record,
    write_index,
)
from tests.unit.test_download import ctg_settings

pytestmark = pytest.mark.unit

PARAMS = ctg_settings(max_fail_fraction=0.9, workers=2)


def _rewrite(folder: Path, name: str, seed: int) -> None:
    fhr, uc, ph = synth_record(np.random.default_rng(seed), False, 31)
    write_ctg_record(folder, name, fhr, uc, ph=ph)


def test_changed_failed_and_removed_records(tmp_path: Path) -> None:
    src = make_ctg_mirror(tmp_path / "m", n_records=5, seed=3, duration_min=(31, 33))
    out = tmp_path / "raw"
    out.mkdir()
    assert run_ingest(src, out, PARAMS)["arrivals"]["n_added"] == 5
    old_1002 = (out / "1002.dat").read_bytes()
    old_1004 = (out / "1004.dat").read_bytes()

    _rewrite(src, "1002", 20)  # changed, then broken after its checksum was published
    _rewrite(src, "1003", 30)  # changed, fine
    _rewrite(src, "1004", 40)  # changed: the new .hea arrives, the new .dat is broken
    for ext in (".hea", ".dat"):
        (src / f"1005{ext}").unlink()  # withdrawn
    write_index(src)
    (src / "1002.dat").write_bytes(b"\1" * 64)
    (src / "1004.dat").write_bytes(b"\1" * 64)
    shutil.copy2(src / "1002.hea", tmp_path / "1002.hea.new")
    (src / "1002.hea").write_bytes(b"broken")

    report = run_ingest(src, out, PARAMS)
    new = report["arrivals"]
    assert new["changed"] == ["1003"] and new["added"] == []
    assert new["removed"] == ["1004", "1005"]  # 1004 half-new: dropped, not mixed
    reasons = {r["item"]: r["reason"] for r in report["quarantined"]}
    assert set(reasons) == {"1002", "1004"} and "ingested before is kept" in reasons["1002"]
    assert (out / "1002.dat").read_bytes() == old_1002  # the verified version stays
    assert not (out / "1004.dat").exists() and old_1004
    assert (out / "RECORDS").read_text().split() == ["1001", "1002", "1003"]
    assert str(src) not in str(reasons)  # origins, not locations, in what is tracked


def _files_under(root: Path, skip: set[Path]) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and not any(s in p.parents for s in skip)}


def test_traversal_names_in_records_are_quarantined_and_nothing_leaves_raw(tmp_path: Path) -> None:
    """RECORDS names ``../../evil`` whose files exist beside the tree with valid checksums:
    without the name checks ingest copied them to ``raw/../../evil.*``, outside ``raw``."""
    src = make_ctg_mirror(tmp_path / "site" / "m", n_records=4, seed=3, duration_min=(31, 33))
    for ext in (".hea", ".dat"):  # the files the hostile names point at, with valid checksums
        (tmp_path / f"evil{ext}").write_bytes((src / f"1001{ext}").read_bytes())
    write_index(src, ["1001", "1002", "1003", "1004", "../../../evil", "ok.name"])
    sums = (src / "SHA256SUMS.txt").read_text()
    digests = {ext: sha256_file(tmp_path / f"evil{ext}") for ext in (".hea", ".dat")}
    extra = "".join(f"{d} ../../../evil{ext}\n" for ext, d in digests.items())
    (src / "SHA256SUMS.txt").write_text(sums + extra)
    out = tmp_path / "site" / "data" / "raw"
    out.mkdir(parents=True)
    before = _files_under(tmp_path, {src, out})

    report = run_ingest(src, out, ctg_settings(max_fail_fraction=0.5, workers=2))
    reasons = {r["item"]: r["reason"] for r in report["quarantined"]}
    assert set(reasons) == {"'../../../evil'", "'ok.name'"}, reasons
    assert all("name pattern" in r or "path separator" in r for r in reasons.values())
    assert (out / "RECORDS").read_text().split() == ["1001", "1002", "1003", "1004"]
    assert _files_under(tmp_path, {src, out}) == before  # nothing written outside raw


def test_a_header_naming_another_file_is_quarantined_by_name(tmp_path: Path) -> None:
    """A record whose header sends wfdb to ``../x.dat`` (checksums published and valid)."""
    src = make_ctg_mirror(tmp_path / "m", n_records=4, seed=3, duration_min=(31, 33))
    hea = src / "1003.hea"
    hea.write_text(hea.read_text().replace("1003.dat", "../x.dat"))
    write_index(src)
    out = tmp_path / "raw"
    out.mkdir()
    report = run_ingest(src, out, ctg_settings(max_fail_fraction=0.5, workers=2))
    [row] = report["quarantined"]
    assert row["item"] == "1003" and "header names signal file '../x.dat'" in row["reason"]
    assert (out / "RECORDS").read_text().split() == ["1001", "1002", "1004"]
    assert not (out / "1003.hea").exists()


def test_us_traversal_names_in_manifest_tables_and_landing_are_quarantined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """manifest.csv, the landing SHA256SUMS.txt, the label table and the HC18 CSV each name a
    ``../`` file (existing, checksums valid): each is quarantined by name, the good images are
    ingested, and nothing is written outside data/raw."""
    import csv

    import yaml

    from stages.common.io import read_json
    from stages.ultrasound.pipeline import ingest as ingest_us
    from stages.ultrasound.pipeline import source as source_us
    from tests.synth_us import make_us_mirror

    mirror = make_us_mirror(tmp_path / "m", n_per_plane=1, n_hc18=2, seed=4, n_missing=0)
    fp, hc = mirror / "fetal_planes", mirror / "hc18"
    images = sorted((fp / "images").glob("*.png"))
    evil = tmp_path / "evil.png"
    evil.write_bytes(images[0].read_bytes())
    rows = [{"image_name": p.name, "sha256": sha256_file(p)} for p in images]
    rows.append({"image_name": "../../evil.png", "sha256": sha256_file(evil)})
    with open(fp / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["image_name", "sha256"])
        writer.writeheader()
        writer.writerows(rows)
    with open(fp / "FETAL_PLANES_DB_data.csv", "a") as fh:
        fh.write("../../../evil,1,Fetal brain,Trans-thalamic,Op. 1,Voluson E6,1\n")
    with open(hc / "pixel_size_and_HC.csv", "a", newline="") as fh:
        fh.write("../../evil.png,0.1,100.0\r\n")
    landing = tmp_path / "landing" / "fetal_planes"
    landing.mkdir(parents=True)
    (landing / "SHA256SUMS.txt").write_text(f"{sha256_file(evil)} images/../../../evil.png\n")
    project = tmp_path / "site" / "project"
    project.mkdir(parents=True)
    (project / "params.yaml").write_text(
        yaml.safe_dump(yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text()))
    )
    for var, value in (("FETAL_PROJECT_ROOT", project), ("FETAL_MIRROR", mirror),
                       ("FETAL_LANDING", tmp_path / "landing")):  # fmt: skip
        monkeypatch.setenv(var, str(value))
    before = _files_under(tmp_path, {mirror, project, tmp_path / "landing"})

    source_us.main()
    ingest_us.main()
    report = read_json(project / "data/reports/ingest_us.json")
    planes, heads = report["fetal_planes"]["quarantined"], report["hc18"]["quarantined"]
    hostile = {"'images/../../evil.png'", "'images/../../../evil.png'", "'../../../evil'"}
    assert hostile <= set(planes)
    assert set(heads) == {"'../../evil.png'"}
    raw = project / "data/raw"
    assert sorted(p.name for p in (raw / "fetal_planes/images").iterdir()) == [
        p.name for p in images
    ]
    assert "evil" not in (raw / "fetal_planes/FETAL_PLANES_DB_data.csv").read_text()
    assert "evil" not in (raw / "hc18/pixel_size_and_HC.csv").read_text()
    assert _files_under(tmp_path, {mirror, project, tmp_path / "landing"}) == before


def test_us_smoke_subset_keeps_the_first_images_of_each_class_and_of_hc18(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ingest_us.max_images_per_class`` / ``max_hc18_images`` (make quickstart): per
    (Plane, Brain_plane, Train) class the first N FETAL_PLANES_DB images by name, the first N
    HC18 images with their annotations; the tables stay whole; 0 keeps everything, and lowering
    N on a second run removes the images left out."""
    import pandas as pd
    import yaml

    from stages.ultrasound.intake.listing import first_hc18, first_per_class
    from stages.ultrasound.pipeline import ingest as ingest_us
    from stages.ultrasound.pipeline import source as source_us
    from tests.synth_us import make_us_mirror

    keys = ["images/001_HC.png", "images/001_HC_Annotation.png", "images/000_2HC.png",
            "images/000_2HC_Annotation.png", "images/003_HC.png",
            "pixel_size_and_HC.csv"]  # fmt: skip
    assert first_hc18(keys, 1) == ["images/000_2HC.png", "images/000_2HC_Annotation.png",
                                   "pixel_size_and_HC.csv"]  # fmt: skip
    assert first_hc18(keys, 0) == sorted(keys)
    classes = {"b": "brain|1", "a": "brain|1", "c": "brain|0"}
    names = ["images/b.png", "images/a.png", "images/c.png", "images/x.png", "images/y.png"]
    assert first_per_class(names, classes, 1) == ["images/a.png", "images/c.png", "images/x.png"]

    mirror = make_us_mirror(tmp_path / "m", n_per_plane=3, n_hc18=4, seed=4, n_missing=0)
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
    params["ingest_us"] |= {"max_images_per_class": 1, "max_hc18_images": 2}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(project))
    monkeypatch.setenv("FETAL_MIRROR", str(mirror))
    monkeypatch.setenv("FETAL_LANDING", str(tmp_path / "no-landing"))

    def ingested() -> tuple[set[str], set[str]]:
        source_us.main()
        ingest_us.main()
        raw = project / "data/raw"
        return ({p.stem for p in (raw / "fetal_planes/images").iterdir()},
                {p.name for p in (raw / "hc18/images").iterdir()})  # fmt: skip

    table = pd.read_csv(mirror / "fetal_planes/FETAL_PLANES_DB_data.csv", dtype=str)
    table["cls"] = table[["Plane", "Brain_plane", "Train"]].agg("|".join, axis=1)
    expected = set(table.sort_values("Image_name").groupby("cls")["Image_name"].first())
    planes, heads = ingested()
    assert planes == expected and len(expected) < len(table)
    assert heads == {"002_HC.png", "002_HC_Annotation.png", "009_HC.png", "009_HC_Annotation.png"}
    raw_table = pd.read_csv(project / "data/raw/fetal_planes/FETAL_PLANES_DB_data.csv")
    assert len(raw_table) == len(table)  # the label table stays whole
    params["ingest_us"] |= {"max_images_per_class": 0, "max_hc18_images": 1}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    planes, heads = ingested()
    assert planes == set(table["Image_name"]) and heads == {"002_HC.png", "002_HC_Annotation.png"}
