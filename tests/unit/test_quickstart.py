"""``make quickstart``'s pieces (the run itself takes minutes and is not part of the suite): the
overrides merge onto params.yaml and fail naming a key params.yaml lost; the workspace is a copy
with its own lineage, DVC cache and remote; every Prefect process shares the project's home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import quickstart as qs
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_overrides_merge_sections_and_replace_values() -> None:
    base = {"a": {"x": 1, "y": [1, 2], "deep": {"k": 1, "j": 2}}, "b": 3}
    merged = qs.deep_merge(base, {"a": {"y": [9], "deep": {"k": 5}}})
    assert merged == {"a": {"x": 1, "y": [9], "deep": {"k": 5, "j": 2}}, "b": 3}
    assert base["a"]["deep"]["k"] == 1  # the base is not changed


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"a": {"gone": 1}}, "a.gone: params.yaml has no such key"),
        ({"a": {"deep": {"renamed": 1}}}, "a.deep.renamed: params.yaml has no such key"),
        ({"a": {"deep": 3}}, "a.deep: params.yaml has a section there"),
        ({"b": {"x": 1}}, "b: params.yaml has a value there"),
        ({"no_section": {"x": 1}}, "no_section: params.yaml has no such key"),
    ],
)
def test_an_override_params_yaml_no_longer_has_fails_naming_the_key(overrides, named) -> None:
    base = {"a": {"x": 1, "deep": {"k": 1}}, "b": 3}
    with pytest.raises(qs.OverrideError) as err:
        qs.deep_merge(base, overrides)
    assert str(err.value) == named


def test_the_committed_overrides_fit_params_yaml_and_make_a_smoke_run() -> None:
    """quickstart/params.yaml against today's params.yaml (a renamed segmenter key fails here)."""
    from flows.summary import is_smoke_run

    params = qs.quickstart_params(ROOT)
    assert params["ingest_ctg"]["max_records"] > 0 and params["ingest_us"]["max_hc18_images"] > 0
    assert is_smoke_run(params)
    assert not is_smoke_run(yaml.safe_load((ROOT / "params.yaml").read_text()))


def test_the_quickstart_names_a_stale_key_before_it_starts(tmp_path: Path, capsys) -> None:
    (tmp_path / "quickstart").mkdir()
    (tmp_path / "params.yaml").write_text("train_segmenter_us:\n  epochs: 80\n")
    (tmp_path / qs.OVERRIDES).write_text("train_segmenter_us:\n  coarse_epochs: 2\n")
    with pytest.raises(qs.OverrideError, match="train_segmenter_us.coarse_epochs"):
        qs.quickstart_params(tmp_path)


def _git_project(root: Path) -> None:
    files = {"params.yaml": "a: 1\n", "dvc.lock": "x\n", "sources/dvc.lock": "y\n",
             "stages/m.py": "X = 1\n", "data/reports/evaluate_ctg.json": "{}\n",
             ".dvc/config": "[core]\n    remote = local\n",
             ".gitignore": "/secret.txt\n"}  # fmt: skip
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=root, check=True)


def test_the_workspace_is_a_fresh_copy_with_its_own_lineage_cache_and_remote(tmp_path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    _git_project(root)
    (root / "stages/m.py").write_text("X = 2\n")  # a local edit is copied
    (root / "stages/new.py").write_text("Y = 1\n")  # so is a new file git does not ignore
    (root / "secret.txt").write_text("no\n")  # an ignored one is not
    ws = root / qs.WORKSPACE
    (ws / "stale").mkdir(parents=True)  # a previous workspace is replaced
    qs.make_workspace(root, ws, {"a": 2})
    assert (ws / "stages/m.py").read_text() == "X = 2\n" and (ws / "stages/new.py").is_file()
    assert not (ws / "secret.txt").exists()
    assert yaml.safe_load((ws / "params.yaml").read_text()) == {"a": 2}
    for gone in ("stale", "dvc.lock", "sources/dvc.lock", "data/reports/evaluate_ctg.json"):
        assert not (ws / gone).exists(), gone
    assert "dir = cache" in (ws / ".dvc/config.local").read_text()
    log = subprocess.run(["git", "log", "--oneline"], cwd=ws, capture_output=True, text=True)
    assert log.stdout.count("\n") == 1  # its own repository, one commit
    env = qs.workspace_env(root, ws, tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{ws}/mlflow.db"
    assert env["FETAL_PROJECT_ROOT"] == str(ws) and "FETAL_LANDING" not in env


def test_a_missing_mirror_stops_the_quickstart_with_the_command_to_run(tmp_path) -> None:
    with pytest.raises(SystemExit, match="FETAL_MIRROR=../shared/data make quickstart"):
        qs.check_mirror("", tmp_path)
    (tmp_path / "m/ctu-uhb").mkdir(parents=True)
    with pytest.raises(SystemExit, match="lacks fetal_planes/, hc18/"):
        qs.check_mirror("m", tmp_path)


def test_a_plain_python_process_in_the_project_sees_the_project_prefect_home() -> None:
    """``python -m flows.training`` after ``source .venv/bin/activate`` (no PREFECT_HOME, no
    make) uses the home ``make ui`` serves and the quickstart passes on: prefect.toml's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    code = "from prefect.settings import get_current_settings as s; print(s().home.resolve())"
    seen = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert seen.returncode == 0, seen.stderr
    assert Path(seen.stdout.strip()) == ROOT / ".prefect"
    old = os.environ.pop("PREFECT_HOME", None)
    try:
        assert qs.prefect_home(ROOT) == ROOT / ".prefect"
    finally:
        if old is not None:
            os.environ["PREFECT_HOME"] = old
    makefile = (ROOT / "Makefile").read_text()
    assert "PREFECT_HOME" not in makefile  # one place says where the home is: prefect.toml
