"""``fetal add-data``: good arrivals land with their checksums listed, bad ones are refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.cli import main
from stages.common.intake.download import parse_sha256sums, sha256_file
from tests.synth_ctg import make_ctg_mirror, synth_record, write_ctg_record
from tests.synth_us import make_us_mirror

pytestmark = pytest.mark.unit


def test_ctg_good_record_lands_bad_one_is_refused(tmp_path: Path, capsys) -> None:
    new = make_ctg_mirror(tmp_path / "new", n_records=2, seed=5)  # 1001, 1002: valid
    fhr, uc, ph = synth_record(np.random.default_rng(1), False, 40)
    write_ctg_record(new, "2001", fhr[::2], uc[::2], ph=ph, fs_hz=2.0)  # wrong sampling rate
    (new / "2002.hea").write_text((new / "1001.hea").read_text().replace("1001", "2002"))
    landing = tmp_path / "landing"

    code = main(["add-data", "ctg", str(new / "1001.hea"), str(new / "2001"), str(new / "2002"),
                 "--landing", str(landing)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "refused 2001: wrong_sampling_rate" in err and "refused 2002: missing 2002.dat" in err
    folder = landing / "ctu-uhb"
    assert (folder / "RECORDS").read_text().split() == ["1001"]
    sums = parse_sha256sums((folder / "SHA256SUMS.txt").read_text())
    assert sums == {f: sha256_file(new / f) for f in ("1001.hea", "1001.dat")}
    assert not (folder / "2001.dat").exists()
    quarantine = pd.read_csv(landing / "quarantine.csv", dtype=str)
    assert set(quarantine["item"]) == {"2001", "2002"}

    # A second good record is added beside the first; the same one again changes nothing.
    assert main(["add-data", "ctg", str(new / "1002"), str(new / "1001"),
                 "--landing", str(landing)]) == 0  # fmt: skip
    assert (folder / "RECORDS").read_text().split() == ["1001", "1002"]
    assert len(parse_sha256sums((folder / "SHA256SUMS.txt").read_text())) == 4


def test_us_images_land_with_their_label_rows(tmp_path: Path, capsys) -> None:
    mirror = make_us_mirror(tmp_path / "m", n_per_plane=1, n_hc18=1, seed=2, n_missing=0)
    images = sorted((mirror / "fetal_planes/images").glob("*.png"))[:3]
    table = pd.read_csv(mirror / "fetal_planes/FETAL_PLANES_DB_data.csv", dtype=str)
    rows = table[table["Image_name"].isin([p.stem for p in images])].copy()
    rows.loc[rows["Image_name"] == images[1].stem, "Plane"] = "Fetal elbow"  # not allowed
    rows.to_csv(tmp_path / "rows.csv", index=False)
    broken = tmp_path / "broken.png"
    broken.write_bytes(images[2].read_bytes()[:200])  # truncated: undecodable
    landing = tmp_path / "landing"

    args = ["add-data", "us", *map(str, [images[0], images[1], broken])]
    assert main([*args, "--labels", str(tmp_path / "rows.csv"), "--landing", str(landing)]) == 1
    err = capsys.readouterr().err
    assert f"refused {images[1].name}: unknown plane 'Fetal elbow'" in err
    assert "refused broken.png: no label row" in err and "undecodable" in err
    folder = landing / "fetal_planes"
    assert [p.name for p in (folder / "images").iterdir()] == [images[0].name]
    landed = pd.read_csv(folder / "FETAL_PLANES_DB_data.csv", dtype=str)
    assert list(landed["Image_name"]) == [images[0].stem]
    sums = parse_sha256sums((folder / "SHA256SUMS.txt").read_text())
    assert sums[f"images/{images[0].name}"] == sha256_file(images[0])
    assert set(sums) == {f"images/{images[0].name}", "FETAL_PLANES_DB_data.csv"}
