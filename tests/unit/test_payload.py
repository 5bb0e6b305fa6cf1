"""``fetal payload-ctg``: a record's last minutes as the body ``fetal serve`` takes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages.cli import main
from tests.synth_ctg import synth_record, write_ctg_record

pytestmark = pytest.mark.unit


def test_the_payload_is_the_last_window_of_the_record_as_recorded(tmp_path: Path, capsys) -> None:
    fhr, uc, ph = synth_record(np.random.default_rng(3), False, 75)
    write_ctg_record(tmp_path, "2001", fhr, uc, ph=ph)
    out = tmp_path / "payload.json"
    assert main(["payload-ctg", str(tmp_path / "2001"), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["dataframe_records"]
    n = 60 * 60 * 4  # train_ctg.window_minutes at ctg_signal.fs_hz
    assert row["fs_hz"] == 4.0 and len(row["fhr_bpm"]) == len(row["uc"]) == n
    assert row["fhr_bpm"] == pytest.approx(np.round(fhr[-n:] * 100) / 100)  # 0 (loss) kept as 0
    assert row["uc"] == pytest.approx(np.round(uc[-n:] * 100) / 100)
    assert main(["payload-ctg", str(tmp_path / "2001.hea"), "--out", str(out), "--minutes",
                 "20"]) == 0  # fmt: skip
    assert len(json.loads(out.read_text())["dataframe_records"][0]["uc"]) == 20 * 60 * 4
    assert "the last 20.0 min" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("minutes_recorded", "args", "reason"),
    [
        (8, [], "8.0 min of signal; a served model needs at least 10 min"),
        (40, ["--minutes", "5"], "--minutes 5 is outside ctg_signal's 10-180 min"),
        (40, ["--minutes", "200"], "--minutes 200 is outside ctg_signal's 10-180 min"),
    ],
)
def test_a_record_a_served_model_would_refuse_makes_no_payload(
    tmp_path: Path, capsys, minutes_recorded, args, reason
) -> None:
    fhr, uc, ph = synth_record(np.random.default_rng(4), False, minutes_recorded)
    write_ctg_record(tmp_path, "2002", fhr, uc, ph=ph)
    out = tmp_path / "payload.json"
    assert main(["payload-ctg", str(tmp_path / "2002"), "--out", str(out), *args]) == 1
    assert reason in capsys.readouterr().err and not out.exists()


def test_an_unreadable_record_is_named(tmp_path: Path, capsys) -> None:
    assert main(["payload-ctg", str(tmp_path / "9999"), "--out", str(tmp_path / "p.json")]) == 1
    assert "record 9999: missing header file 9999.hea" in capsys.readouterr().err


def test_outside_the_project_it_says_where_params_yaml_is_looked_for(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(tmp_path))
    assert main(["payload-ctg", str(tmp_path / "1001"), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "params.yaml" in err and "FETAL_PROJECT_ROOT" in err and "Traceback" not in err
