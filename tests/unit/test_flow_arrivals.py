"""The training flow says what data arrived (from the ingest reports) and which stages ran."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.arrivals import arrivals_markdown
from flows.training import StageResult

pytestmark = pytest.mark.unit


def test_arrivals_markdown_counts_names_and_stages(tmp_path: Path) -> None:
    reports = tmp_path / "data/reports"
    reports.mkdir(parents=True)
    summary = {"n_added": 2, "added": ["1009", "1010"], "n_changed": 0, "changed": []}
    summary |= {"n_removed": 1, "removed": ["1005"], "version": "ab" * 32}
    ctg = {"arrivals": summary, "quarantined_records": ["1013"]}
    (reports / "ingest_ctg.json").write_text(json.dumps(ctg))
    timings = [
        StageResult("source_ctg", 0.3, True),
        StageResult("ingest_ctg", 1.0, True),
        StageResult("train_ctg", 0.1, False),
        StageResult("source_us", 0.3, True),
        StageResult("ingest_us", 0.1, False),
    ]
    text = arrivals_markdown(tmp_path, timings)
    row = next(line for line in text.splitlines() if line.startswith("| ctu-uhb"))
    assert "| 2 (1009, 1010) | 0 | 1 (1005) | 1 (1013) | abababababab |" in row
    assert "| fetal_planes | no new data (ingest_us skipped) |" in text
    assert "Stages run: source_ctg, ingest_ctg, source_us" in text
    nothing = arrivals_markdown(tmp_path, [StageResult("ingest_ctg", 0.1, False)])
    assert "none (nothing changed)" in nothing and "| hc18 | not in this run |" in nothing
