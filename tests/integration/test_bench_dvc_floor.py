"""bench.dvc_floor rebuilds the project's own graph with empty commands, and DVC sees it as such.

The bench's "the project's graph, empty commands" row is only DVC's floor if the scratch
repository is the project's graph (every stage, dep, param section and out, as many files in
each directory as the committed lock) and a no-op there runs nothing but the source checks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from bench.dvc_floor import dir_file_counts, empty_graph, make_empty_project, trivial_cmd
from bench.scratch import BIN
from tests.import_graph import ROOT, pipeline_stages

pytestmark = pytest.mark.integration


def test_the_empty_graph_is_the_projects_graph_with_only_the_commands_changed() -> None:
    real = pipeline_stages()
    empty = {name: stage for doc in empty_graph().values() for name, stage in doc["stages"].items()}
    assert set(empty) == set(real)
    for name, stage in real.items():
        assert empty[name]["cmd"] == trivial_cmd(stage)
        assert {k: v for k, v in empty[name].items() if k != "cmd"} == {
            k: v for k, v in stage.items() if k != "cmd"
        }


def test_a_trivial_command_keeps_only_the_outputs_dvc_would_remove() -> None:
    stage = {
        "outs": ["a/dir", {"b.json": {"persist": True}}],
        "metrics": [{"m.json": {"cache": False}}],
    }
    assert trivial_cmd(stage) == "touch a/dir m.json"
    assert trivial_cmd({"outs": [{"b.json": {"persist": True}}]}) == "true"


def test_directory_sizes_come_from_the_lock_files(tmp_path: Path) -> None:
    (tmp_path / "sources").mkdir()
    lock = {"stages": {"a": {"deps": [{"path": "in", "nfiles": 3}, {"path": "f.py"}],
                             "outs": [{"path": "out", "nfiles": 7}]}}}  # fmt: skip
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert dir_file_counts(tmp_path) == {"in": 3, "out": 7}


def test_a_no_op_in_the_empty_project_runs_only_the_always_changed_stages(tmp_path: Path) -> None:
    n = make_empty_project(tmp_path)
    assert n == len(pipeline_stages())
    counts = dir_file_counts()
    big = max(counts, key=counts.get)
    assert sum(1 for p in (tmp_path / big).rglob("*") if p.is_file()) == counts[big]
    out = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    always = {  # DVC names a stage of sources/dvc.yaml with its file
        name if name in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
        else f"sources/dvc.yaml:{name}"
        for name, stage in pipeline_stages().items() if stage.get("always_changed")
    }  # fmt: skip
    assert always and ran == always
