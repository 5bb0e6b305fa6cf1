"""Shared plumbing: params lookup, atomic writes, quarantine, registry promotion rules."""

from __future__ import annotations

import os
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


def test_registry_promotes_only_beyond_margin_and_is_idempotent(tmp_path: Path, monkeypatch):
    """Real MLflow (sqlite): champion moves only when the challenger beats it by the margin
    on the same records (paired)."""
    from stages.common.registry import tracking
    from tests.synth_registry import oof_evaluation

    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(tmp_path))
    (tmp_path / "params.yaml").write_text("{}\n")
    artifact = tmp_path / "weights.txt"
    artifact.write_text("w")
    with tracking.run("unit", "r"):
        uri = tracking.log_predictor_model(
            "model", "tests.unit.test_common:_ConstantPredictor", {"w": artifact}, ["pandas"]
        )
    v1 = tracking.register_model(uri, "unit-model", {"cv_auc": 0.70}, idempotency_key="a")
    assert tracking.promote_if_better(
        "unit-model", v1, "cv_auc", 0.01, oof_evaluation(0.7)
    ).promoted
    v2 = tracking.register_model(uri, "unit-model", {"cv_auc": 0.705}, idempotency_key="b")
    decision = tracking.promote_if_better("unit-model", v2, "cv_auc", 0.01, oof_evaluation(0.705))
    assert not decision.promoted and decision.champion_version == v1
    assert tracking.register_model(uri, "unit-model", {"cv_auc": 0.705}, "b") == v2  # no duplicate
    v3 = tracking.register_model(uri, "unit-model", {"cv_auc": 0.85}, idempotency_key="c")
    assert tracking.promote_if_better(
        "unit-model", v3, "cv_auc", 0.01, oof_evaluation(0.85)
    ).promoted
    rows = tracking.compare_versions("unit-model")
    assert [r["version"] for r in rows] == [3, 2, 1]
    assert rows[0]["aliases"] == "challenger,champion"
    model = tracking.load_model(tracking.champion_uri("unit-model"))
    out = model.predict(pd.DataFrame({"x": [1, 2, 3]}))
    assert list(out["probability"]) == [0.25, 0.25, 0.25]
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///")


class _Constant:
    def predict(self, model_input):
        return pd.DataFrame({"probability": [0.25] * len(model_input)})


def _ConstantPredictor(artifacts: dict[str, str]) -> _Constant:  # noqa: N802 - loader name
    assert Path(artifacts["w"]).read_text() == "w"
    return _Constant()


def test_relative_mirror_setting_is_read_from_the_project_root(tmp_path: Path) -> None:
    from stages.common.params import resolve_mirror

    root = tmp_path / "project"
    assert resolve_mirror("../shared/data", root) == tmp_path / "shared" / "data"
    assert resolve_mirror("/abs/mirror", root) == Path("/abs/mirror")
