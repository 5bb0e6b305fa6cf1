"""Shared fixtures: a toy copy of the repository for real ``dvc repro`` runs, isolated MLflow."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stages.common.params import resolve_mirror

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# What a toy repository needs to run the stages: code, pipeline, params, DVC config.
TOY_REPO_ITEMS = [
    "stages", "flows", "params.yaml", "dvc.yaml", "sources/dvc.yaml", "pyproject.toml"
]  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    """A relative ``FETAL_MIRROR`` means relative to this project's root, in every test process.

    Stages run in toy repositories under pytest's temp folder would otherwise read it from there.
    """
    setting = os.environ.get("FETAL_MIRROR", "").strip()
    if setting:
        os.environ["FETAL_MIRROR"] = str(resolve_mirror(setting, ROOT))


def shared_mirror(dataset: str) -> Path:
    """The real mirror of ``dataset`` beside the project, or skip the test cleanly."""
    base = Path(os.environ.get("FETAL_MIRROR", SHARED_DATA))
    path = base / dataset
    if not path.is_dir():
        pytest.skip(f"no mirror of {dataset} at {path}")
    return path


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own MLflow store: tests never touch the project's mlflow.db."""
    if "MLFLOW_TRACKING_URI" not in os.environ or os.environ.get("FETAL_TEST_KEEP_MLFLOW") != "1":
        store = tmp_path_factory.mktemp("mlflow")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    yield


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A temporary Prefect API (``prefect_test_harness``) for the flows run in-process; yields
    its URL. One per session: the server takes ~20 s to start and test_faults and test_flows
    both need one (each test's flows and artifacts are told apart by repository and time)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()


def ci_report(name: str, text: str) -> None:
    """Print ``text`` and, when ``FETAL_CI_REPORT_DIR`` is set, save it there as ``name``.md.

    pytest hides a passing test's output; ``.ci/run`` prints the saved reports after the suite,
    so the metrics of the runs on the real mirrors appear in every CI log.
    """
    print(text)
    folder = os.environ.get("FETAL_CI_REPORT_DIR", "").strip()
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.md").write_text(text + "\n", encoding="utf-8")


def set_params(repo: Path, updates: dict[str, dict]) -> None:
    """Update sections of a toy repository's params.yaml (tests shrink epochs, sizes): nested
    sections are merged key by key; a key params.yaml lacks is added (tests plant faults)."""

    def merge(base: dict, new: dict) -> dict:
        out = dict(base)
        for key, value in new.items():
            both = isinstance(value, dict) and isinstance(base.get(key), dict)
            out[key] = merge(base[key], value) if both else value
        return out

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump(merge(params, updates), sort_keys=False))


def toy_ctg_source(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_records: int, params: dict
) -> Path:
    """A synthetic mirror of ``n_records`` 35-45 minute CTG records as the toy repository's source
    (``FETAL_MIRROR``), with ``params`` set; returns the mirror's ``ctu-uhb`` folder."""
    from tests.synth_ctg import make_ctg_mirror

    minutes = (35, 45)
    mirror = make_ctg_mirror(tmp_path / "mirror", n_records=n_records, seed=4, duration_min=minutes)
    monkeypatch.setenv("FETAL_MIRROR", str(mirror.parent))
    set_params(repo, params)
    return mirror


@pytest.fixture
def toy_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh git + DVC repository holding a copy of the project's code and pipeline."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for item in TOY_REPO_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (repo / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / item)
    (repo / "data").mkdir()
    shutil.copy2(ROOT / "data" / ".gitignore", repo / "data" / ".gitignore")
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([dvc_bin(), "init", "-q"], cwd=repo, check=True, env=env)
    subprocess.run([dvc_bin(), "config", "core.analytics", "false"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "toy"], cwd=repo, check=True, env=env)
    monkeypatch.setenv("PYTHONPATH", str(repo))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    monkeypatch.delenv("FETAL_PROJECT_ROOT", raising=False)
    yield repo


def dvc_bin() -> str:
    venv = Path(os.sys.executable).parent / "dvc"
    return str(venv) if venv.exists() else "dvc"


def run_dvc(repo: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real ``dvc`` in ``repo``; on failure the assertion shows its output."""
    # dvc.yaml commands say `python`: the venv running the tests must come first on PATH.
    env = {**os.environ, "PATH": f"{Path(dvc_bin()).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [dvc_bin(), *args], cwd=repo, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc
