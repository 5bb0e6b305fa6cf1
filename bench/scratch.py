"""A scratch git + DVC copy of the project for benchmarks that run real ``dvc repro``.

The copy holds the code, params and pipeline (never data), uses its own MLflow store, and reads
the data from ``FETAL_MIRROR``: the project's own outputs and registry are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ITEMS = ("stages", "flows", "params.yaml", "dvc.yaml", "sources/dvc.yaml", "pyproject.toml")
BIN = Path(sys.executable).parent


def make_scratch_project(repo: Path) -> None:
    """Copy the project's code and pipeline into ``repo`` and initialise git and DVC there."""
    repo.mkdir(parents=True, exist_ok=True)
    for item in ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, repo / item, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (repo / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / item)
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, env=scratch_env(repo, None))


def scratch_env(repo: Path, mirror_root: Path | None) -> dict[str, str]:
    """Environment for ``dvc`` in the scratch project (its own MLflow store, venv on PATH)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("FETAL_PROJECT_ROOT", None)
    if mirror_root is not None:
        env["FETAL_MIRROR"] = str(mirror_root)
    return env


def run_dvc(repo: Path, mirror_root: Path, *args: str) -> subprocess.CompletedProcess:
    """``dvc ARGS`` in the scratch project; the completed process (output captured)."""
    return subprocess.run(
        [str(BIN / "dvc"), *args],
        cwd=repo,
        env=scratch_env(repo, mirror_root),
        capture_output=True,
        text=True,
    )
