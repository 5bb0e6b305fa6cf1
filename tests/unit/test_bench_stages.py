"""bench.stages: each stage's time from DVC's own lines."""

from __future__ import annotations

import pytest

from bench.stages import stage_times

pytestmark = pytest.mark.unit


def test_a_stage_runs_until_the_next_stage_line_and_skips_cost_nothing() -> None:
    lines = [
        (0.5, "Running stage 'ingest_ctg':"),
        (0.6, "> python -m stages.ctg.ingest"),
        (2.0, "Updating lock file 'dvc.lock'"),
        (3.0, "Stage 'validate_ctg' didn't change, skipping"),
        (3.5, "Running stage 'train_ctg':"),
        (9.0, "INFO __main__: fold 0: AUC 0.7"),
    ]
    assert stage_times(lines, end_s=13.5) == [
        ("ingest_ctg", "ran", 2.5),  # until the skip line: DVC checks the next stage there
        ("validate_ctg", "skipped", 0.0),
        ("train_ctg", "ran", 10.0),  # the last stage ends with the run
    ]


def test_no_stage_lines_give_no_rows() -> None:
    assert stage_times([(0.1, "Data and pipelines are up to date.")], end_s=1.0) == []
