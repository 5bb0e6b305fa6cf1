"""``fetal summary``: each registered model's champion, its deciding figure with its interval,
what the last decisions did, and where to look next; a smoke run says so; the committed JSON holds
no times, hosts or "what changed"."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from flows import summary
from flows.outcomes import decision_row, kept_row
from flows.promote import COMPARISON_ROWS
from stages.common.io import write_json
from stages.common.registry import tracking
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

CTG_TAGS = {"primary_metric": "cv_auc", "cv_auc": "0.7163", "metric_interval": "[0.6480, 0.7820]",
            "n_items": "452", "alert_threshold": "0.4612"}  # fmt: skip
SEG_TAGS = {"primary_metric": "oof_hc_error_mm_mean_neg", "oof_hc_error_mm_mean_neg": "-3.89",
            "metric_interval": "[-4.5000, -3.3000]", "n_items": "200"}  # fmt: skip


def _version(name: str, family: str, tags: dict[str, str], root: Path) -> str:
    client = tracking.client()
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    mv = client.create_model_version(name, source=str(root), tags={"family": family, **tags})
    return str(mv.version)


def _project(tmp_path: Path, **params: dict) -> Path:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in params.items():
        base[section] |= values
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))
    return tmp_path


def _registered(root: Path, ctg: list[str], us: list[str]) -> None:
    write_json(root / "data/reports/register_ctg.json",
               {"models": [{"name": "ctg-distress", "version": v} for v in ctg]})  # fmt: skip
    write_json(root / "data/reports/register_us.json",
               {"models": [{"name": "us-head-segmenter", "version": v} for v in us]})  # fmt: skip


def test_summary_names_each_champion_its_figure_and_what_changed(tmp_path: Path) -> None:
    root = _project(tmp_path)
    v1 = _version("ctg-distress", "logistic", CTG_TAGS, root)
    v2 = _version("ctg-distress", "lstm", {**CTG_TAGS, "cv_auc": "0.671"}, root)
    s1 = _version("us-head-segmenter", "segmenter", SEG_TAGS, root)
    s2 = _version("us-head-segmenter", "segmenter", SEG_TAGS, root)
    tracking.set_alias("ctg-distress", tracking.CHAMPION, v1)
    tracking.set_alias("us-head-segmenter", tracking.CHAMPION, s2)
    _registered(root, [v1, v2], [s2])
    rows = [
        kept_row("ctg-distress", v1, v1, "the champion itself"),
        kept_row("ctg-distress", v2, v1, "not better beyond noise"),
        decision_row("us-head-segmenter", s2, s1, {"reason": "better"}, [{"to": s2}]),
    ]
    write_json(root / COMPARISON_ROWS, {"title": "t", "rows": rows})

    md = summary.write_summary(root)
    assert "Smoke run" not in md
    ctg = next(line for line in md.splitlines() if "`ctg-distress`" in line)
    assert "| v1 | logistic | out-of-fold AUC 0.716 [0.648, 0.782] | 452 records |" in ctg
    assert "champion kept (v1); not promoted: v2" in ctg
    seg = next(line for line in md.splitlines() if "`us-head-segmenter`" in line)
    assert "out-of-fold mean absolute HC error, mm 3.890 [3.300, 4.500]" in seg  # un-negated
    assert "champion moved v1 -> v2" in seg
    assert "`fetal compare-models ctg-distress`" in md and "http://127.0.0.1:4200" in md
    assert (root / summary.SUMMARY_MD).read_text() == md

    data = json.loads((root / summary.SUMMARY_JSON).read_text())
    assert data["smoke_run"] is False
    first = data["models"][0]
    assert (first["name"], first["champion"], first["family"]) == ("ctg-distress", "1", "logistic")
    assert first["threshold"] == pytest.approx(0.4612) and first["n"] == 452
    text = json.dumps(data)
    assert str(tmp_path) not in text and "kept" not in text and "127.0.0.1" not in text


def test_a_subset_run_is_labelled_a_smoke_run_and_a_model_without_champion_says_so(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path, ingest_ctg={"max_records": 60})
    v1 = _version("ctg-distress", "logistic", CTG_TAGS, root)
    _registered(root, [v1], [])
    md = summary.write_summary(root)
    assert summary.SMOKE_BANNER in md
    assert "| `ctg-distress` | none |" not in md and "| ctg-distress | none |" in md
    assert "no decision recorded here yet" in md
    assert json.loads((root / summary.SUMMARY_JSON).read_text())["smoke_run"] is True


def test_fetal_summary_without_a_register_report_exits_1(tmp_path: Path, capsys) -> None:
    assert summary.run(argparse.Namespace(repo=str(tmp_path))) == 1
    assert "run the pipeline first" in capsys.readouterr().err
