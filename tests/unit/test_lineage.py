"""Run lineage tags: ``git_commit`` is dirty only for code, dep hashes are what the run read."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from stages.common.registry import tracking

pytestmark = pytest.mark.unit

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t"}
GIT_ENV |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A committed project: code, params, dvc.yaml (stage b reads a's folder), dvc.lock."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/b.py").write_text("print('b')\n")
    (tmp_path / "params.yaml").write_text("b:\n  x: 1\n")
    pipeline = {"stages": {"b": {"cmd": "python -m stages.b", "deps": ["stages/b.py", "data/a"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    lock = {
        "schema": "2.0",
        "stages": {
            "a": {"outs": [{"path": "data/a", "md5": "fresh.dir"}]},
            # b's own entry describes its previous run while it runs
            "b": {"deps": [{"path": "data/a", "md5": "stale.dir"}]},
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "data/reports").mkdir(parents=True)
    (tmp_path / "data/reports/b.json").write_text("{}\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "init")
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(tmp_path))
    return tmp_path


def test_git_commit_dirty_only_when_code_or_config_changed(project: Path) -> None:
    sha = _git(project, "rev-parse", "HEAD")
    assert tracking.git_commit() == sha
    # what dvc repro itself rewrites before a training stage reads the commit
    (project / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (project / "data/reports/b.json").write_text('{"auc": 0.8}\n')
    assert tracking.git_commit() == sha
    (project / "params.yaml").write_text("b:\n  x: 2\n")
    assert tracking.git_commit() == f"{sha}-dirty"
    _git(project, "checkout", "params.yaml")
    (project / "stages/b.py").write_text("print('changed')\n")
    assert tracking.git_commit() == f"{sha}-dirty"


def test_dep_hashes_are_what_this_run_reads(project: Path) -> None:
    hashes = tracking.stage_input_hashes("b")
    code_md5 = hashlib.md5((project / "stages/b.py").read_bytes()).hexdigest()
    assert hashes == {"stages/b.py": code_md5, "data/a": "fresh.dir"}
    tags = tracking.lineage_tags("b")
    assert tags["dvc_stage"] == "b" and tags["dvc_dep.data/a"] == "fresh.dir"
    (project / "stages/b.py").write_text("print('changed')\n")
    assert tracking.lineage_tags("b")["dvc_deps_md5"] != tags["dvc_deps_md5"]
    assert tracking.stage_input_hashes("not_a_stage") == {}
