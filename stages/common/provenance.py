"""Provenance of runs and registered models: code commit, content hashes, pinned requirements.

Pure file and metadata reads (no MLflow); :mod:`stages.common.tracking` re-exports them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from stages.common.params import project_root


def git_commit() -> str:
    """The commit of the working tree, with ``-dirty`` when it has uncommitted changes."""
    try:
        root = project_root()
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stage_input_hashes(stage: str) -> dict[str, str]:
    """The dvc.lock hashes of a stage's dependencies (as of the last completed ``dvc repro``)."""
    lock = project_root() / "dvc.lock"
    if not lock.is_file():
        return {}
    with open(lock, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    deps = (data.get("stages", {}).get(stage) or {}).get("deps", [])
    return {d["path"]: d.get("md5") or d.get("hash", "") for d in deps if "path" in d}


def data_hash(paths: list[str | Path]) -> str:
    """A short content hash of files or folders: what a model version was evaluated on."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(p.parent)).encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()[:16]


# What a registered pyfunc needs besides the stage code it ships with (``code_paths``). One list
# for both modalities: the whole ``stages`` package ships with every model.
SERVING_PACKAGES = (
    "tensorflow-cpu",
    "keras",
    "numpy",
    "scipy",
    "pandas",
    "scikit-image",
    "pillow",
    "wfdb",
    "mlflow",
    "pyyaml",
)


def pinned_requirements(packages: Sequence[str] = SERVING_PACKAGES) -> list[str]:
    """``name==version`` of each package as installed here: a served model gets the versions
    it was trained and tested with."""
    return [f"{name}=={metadata.version(name)}" for name in packages]


def idempotency_key(input_paths: list[Path], params: Any, code: str) -> str:
    """Key of one registration: hash of the inputs' content, the params and the code (a git
    commit or a content hash of the code): a rerun with all three unchanged reuses its version."""
    h = hashlib.sha256()
    h.update(data_hash(input_paths).encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(code.encode())
    return h.hexdigest()[:24]
