"""bench.pipeline_times gives each stage DVC ran its own time (known answers)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.pipeline_times import main, stage_times
from bench.scratch import BIN

pytestmark = pytest.mark.integration

STAGES = """stages:
  quick:
    cmd: echo a > a.txt
    outs: [a.txt]
  slow:
    cmd: sleep 1.5 && cp a.txt b.txt
    deps: [a.txt]
    outs: [b.txt]
  other:
    cmd: echo c > c.txt
    outs: [c.txt]
"""


def test_each_stage_gets_the_time_until_its_lock_update() -> None:
    ticks = iter([10.0, 12.5, 14.0, 30.0, 31.0, 40.0])
    lines = [
        "Running stage 'a':\n",  # 10.0
        "> python -m a\n",
        "Updating lock file 'dvc.lock'\n",  # 12.5
        "Stage 'b' didn't change, skipping\n",
        "Running stage 'c':\n",  # 14.0
        "epoch 1\n",
        "Updating lock file 'dvc.lock'\n",  # 30.0
        "Stage 'd' is cached - skipping run, checking out outputs\n",
        "Running stage 'e':\n",  # 31.0, fails: no lock update
        "ERROR: failed to reproduce 'e'\n",
    ]  # the end of the output: 40.0
    ran, skipped = stage_times(lines, clock=lambda: next(ticks))
    assert ran == [("a", 2.5), ("c", 16.0), ("e", 9.0)]
    assert skipped == ["b", "d"]


def test_a_real_repro_times_the_slow_stage(tmp_path: Path, capsys) -> None:
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(STAGES)
    assert main(["--project", str(tmp_path)]) == 0
    rows = {
        line.split("|")[1].strip(): float(line.split("|")[2])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and not line.startswith("| stage") and "**" not in line
    }
    assert set(rows) == {"quick", "slow", "other"}
    # the 1.5 s sleep is the slow stage's, not another's
    assert rows["slow"] >= 1.5
    assert rows["quick"] < 1.5 and rows["other"] < 1.5
