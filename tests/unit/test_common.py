"""Shared plumbing: params lookup, atomic writes, quarantine, registry promotion rules."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stages.common import io, params

pytestmark = pytest.mark.unit


def test_load_params_reads_section_and_rejects_missing(tmp_path: Path, monkeypatch):
    (tmp_path / "params.yaml").write_text("a_stage:\n  x_hz: 4\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FETAL_PROJECT_ROOT", raising=False)
    assert params.load_params("a_stage") == {"x_hz": 4}
    with pytest.raises(KeyError, match="no section 'other'"):
        params.load_params("other")


def test_mirror_dir_from_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FETAL_MIRROR", str(tmp_path))
    assert params.mirror_dir("ctu-uhb") == tmp_path / "ctu-uhb"
    monkeypatch.setenv("FETAL_MIRROR", "")
    assert params.mirror_dir("ctu-uhb") is None


def test_atomic_path_leaves_old_file_when_writer_fails(tmp_path: Path):
    target = tmp_path / "out.json"
    io.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("killed mid-write")
    assert io.read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_dir_swaps_whole_folder(tmp_path: Path):
    target = tmp_path / "models"
    with io.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_quarantine_keeps_every_item_with_reason(tmp_path: Path):
    q = io.Quarantine("validate_ctg")
    q.add("1001", "non-numeric pH 'abc'")
    q.add("1002", "sampling rate 8 Hz, expected 4 Hz")
    assert "1001" in q and len(q) == 2
    q.write(tmp_path / "q.csv")
    df = pd.read_csv(tmp_path / "q.csv")
    assert list(df.columns) == ["item", "stage", "reason"]
    assert df["reason"].str.contains("8 Hz").any()


def test_relative_mirror_setting_is_read_from_the_project_root(tmp_path: Path) -> None:
    from stages.common.params import resolve_mirror

    root = tmp_path / "project"
    assert resolve_mirror("../shared/data", root) == tmp_path / "shared" / "data"
    assert resolve_mirror("/abs/mirror", root) == Path("/abs/mirror")
