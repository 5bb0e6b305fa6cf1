"""ingest_ctg against a changing source folder: what is re-fetched, kept, dropped and reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from stages.ctg.pipeline.ingest import run_ingest
from tests.synth_ctg import make_ctg_mirror, synth_record, write_ctg_record, write_index

pytestmark = pytest.mark.unit

PARAMS = {"max_fail_fraction": 0.9, "workers": 2}


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
