"""A scratch git + DVC copy of the project for benchmarks that run real ``dvc repro``.

The copy holds the code, params and pipeline (never data), uses its own MLflow store, and reads
the data from ``FETAL_MIRROR``: the project's own outputs and registry are never touched.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
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


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children (``getrusage``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_dvc(repo: Path, env: dict[str, str], *args: str) -> tuple[float, float, str]:
    """Wall s, CPU s and stdout of one ``dvc ARGS`` in ``repo``; raises when it fails."""
    cpu0, t0 = children_cpu_s(), time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True
    )
    wall, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {repo}:\n{proc.stdout}{proc.stderr}")
    return wall, cpu, proc.stdout
