"""A stage DVC restores from its run cache did not run: the training flow must say so.

Found in the issue-11 rehearsal: a clone sharing the DVC cache of a full run got back the full
mirror, every training stage's inputs were ones trained before, DVC checked their outputs out of
its run cache ("is cached - skipping run") and no code ran, nothing was registered, yet the flow
called the stages "ran" and quoted the challenger's old verdict as this run's decision. (Since
then decisions are fresh ones of ``promote_champions`` after every run, never a stage's verdict.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flows.arrivals import arrivals_markdown
from flows.outcomes import StageResult, repro_outcome
from flows.training import dvc_command, stage_env

pytestmark = pytest.mark.integration

STAGE = """stages:
  step:
    cmd: cp params.yaml out.txt
    params: [step.n]
    outs: [out.txt]
"""


def _repro(repo: Path) -> str:
    proc = subprocess.run(
        [*dvc_command(), "repro", "-s", "step"],
        cwd=repo,
        env=stage_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return repro_outcome(proc.stdout)


def test_real_dvc_output_tells_ran_unchanged_and_restored_apart(tmp_path: Path) -> None:
    subprocess.run([*dvc_command(), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(STAGE)
    params = tmp_path / "params.yaml"
    params.write_text("step:\n  n: 1\n")
    assert _repro(tmp_path) == "ran"
    assert _repro(tmp_path) == "unchanged"
    params.write_text("step:\n  n: 2\n")
    assert _repro(tmp_path) == "ran"
    assert (tmp_path / "out.txt").read_text() == "step:\n  n: 2\n"
    params.write_text("step:\n  n: 1\n")  # inputs run before: DVC checks the old output out
    assert _repro(tmp_path) == "restored"
    assert (tmp_path / "out.txt").read_text() == "step:\n  n: 1\n"


def test_arrivals_name_the_restored_stages_apart_from_the_ones_that_ran(tmp_path: Path) -> None:
    timings = [
        StageResult("ingest_ctg", 1.0, ran=True),
        StageResult("train_families_ctg", 2.0, ran=False, restored=True),
        StageResult("evaluate_ctg", 0.5, ran=False),
    ]
    body = arrivals_markdown(tmp_path, timings)
    assert "Stages run: ingest_ctg\n" in body
    assert body.rstrip().endswith("not run (these inputs were run before): train_families_ctg")
    assert [t.status for t in timings] == ["ran", "restored", "unchanged"]
