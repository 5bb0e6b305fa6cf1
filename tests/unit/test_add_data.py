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
    broken = tmp_path / "Patient00777_Plane3_1_of_1.png"
    broken.write_bytes(images[2].read_bytes()[:200])  # truncated: undecodable
    odd = tmp_path / "my scan.png"  # a name FETAL_PLANES_DB's pattern does not allow
    odd.write_bytes(images[0].read_bytes())
    landing = tmp_path / "landing"

    args = ["add-data", "us", *map(str, [images[0], images[1], broken, odd])]
    assert main([*args, "--labels", str(tmp_path / "rows.csv"), "--landing", str(landing)]) == 1
    err = capsys.readouterr().err
    assert f"refused {images[1].name}: unknown plane 'Fetal elbow'" in err
    assert f"refused {broken.name}: no label row" in err and "undecodable" in err
    assert "refused 'my scan.png': image name does not match" in err
    folder = landing / "fetal_planes"
    assert [p.name for p in (folder / "images").iterdir()] == [images[0].name]
    landed = pd.read_csv(folder / "FETAL_PLANES_DB_data.csv", dtype=str)
    assert list(landed["Image_name"]) == [images[0].stem]
    sums = parse_sha256sums((folder / "SHA256SUMS.txt").read_text())
    assert sums[f"images/{images[0].name}"] == sha256_file(images[0])
    assert set(sums) == {f"images/{images[0].name}", "FETAL_PLANES_DB_data.csv"}


def test_a_header_naming_another_file_or_a_bad_name_is_refused_by_name(
    tmp_path: Path, capsys
) -> None:
    """A header naming ``../x.dat`` crashed ``fetal add-data`` (ValueError from pathlib, and
    wfdb would have opened the file outside the landing copy); now it is refused by name."""
    new = make_ctg_mirror(tmp_path / "new", n_records=2, seed=5)
    (tmp_path / "x.dat").write_bytes((new / "1002.dat").read_bytes())
    hea = new / "1002.hea"
    hea.write_text(hea.read_text().replace("1002.dat", "../x.dat"))
    for ext in (".hea", ".dat"):  # a name the pattern does not allow
        (new / f"bad.name{ext}").write_bytes((new / f"1001{ext}").read_bytes())
    landing = tmp_path / "landing"
    code = main(["add-data", "ctg", str(new / "1001"), str(new / "1002"), str(new / "bad.name"),
                 "--landing", str(landing)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "refused 1002: header names signal file '../x.dat', expected '1002.dat'" in err
    assert "refused 'bad.name': record name does not match" in err
    assert (landing / "ctu-uhb" / "RECORDS").read_text().split() == ["1001"]
    quarantine = pd.read_csv(landing / "quarantine.csv", dtype=str)
    assert set(quarantine["item"]) == {"1002", "'bad.name'"}


def test_two_add_data_at_once_keep_both_records(tmp_path: Path, monkeypatch) -> None:
    """Each reads SHA256SUMS.txt, then (0.5 s later) rewrites it: without the lock the second
    write dropped the first record's checksums."""
    import threading
    import time

    from stages.common.intake import add_data

    new = make_ctg_mirror(tmp_path / "new", n_records=2, seed=5)
    landing = tmp_path / "landing"
    slow_read = add_data.read_sums

    def read_then_wait(path: Path) -> dict[str, str]:
        sums = slow_read(path)
        time.sleep(0.5)  # the window in which the other process reads the same old file
        return sums

    monkeypatch.setattr(add_data, "read_sums", read_then_wait)
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda n=name: codes.append(
            main(["add-data", "ctg", str(new / n), "--landing", str(landing)])))
        for name in ("1001", "1002")
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0, 0]
    folder = landing / "ctu-uhb"
    assert (folder / "RECORDS").read_text().split() == ["1001", "1002"]
    sums = parse_sha256sums((folder / "SHA256SUMS.txt").read_text())
    assert set(sums) == {"1001.hea", "1001.dat", "1002.hea", "1002.dat"}
