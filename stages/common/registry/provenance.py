"""Provenance of runs and registered models: code commit, content hashes, pinned requirements.

Pure file and metadata reads (no MLflow); :mod:`stages.common.registry.tracking` re-exports them.
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

# What the ``git_commit`` tag vouches for: the code and configuration that ran. dvc.lock and
# data/ are left out: `dvc repro` rewrites dvc.lock after every stage, so a training stage
# always saw it modified; the data a run read are named by its dvc_dep tags instead.
CODE_PATHS = ("stages", "flows", "params.yaml", "dvc.yaml", "pyproject.toml", "uv.lock")


def git_commit() -> str:
    """The commit that ran, with ``-dirty`` when tracked code or configuration differs from it.

    Only :data:`CODE_PATHS` count (staged or not); a modified ``dvc.lock`` or data report does
    not make a run dirty.
    """
    try:
        root = project_root()
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def _md5_file(path: Path) -> str:
    h = hashlib.md5()  # DVC 3's file hash: MD5 of the bytes
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage_input_hashes(stage: str) -> dict[str, str]:
    """The DVC md5 of each dependency ``dvc.yaml`` lists for ``stage``, as this run reads it.

    The stage's own dvc.lock entry is written only after its command finishes, so while it runs
    it describes the previous run. Instead: a file is hashed now (DVC 3's md5 of its bytes); a
    folder takes the hash dvc.lock records for the stage that outputs it (written when that
    upstream stage finished, i.e. before this one started in the same ``dvc repro``), else the
    hash in this stage's lock entry. Empty when ``dvc.yaml`` does not define ``stage``.
    """
    root = project_root()
    deps = ((_read_yaml(root / "dvc.yaml").get("stages") or {}).get(stage) or {}).get("deps", [])
    lock = _read_yaml(root / "dvc.lock").get("stages") or {}
    produced = {
        o["path"]: str(o.get("md5", "")) for e in lock.values() for o in (e or {}).get("outs", [])
    }
    own = {d["path"]: str(d.get("md5", "")) for d in (lock.get(stage) or {}).get("deps", [])}
    out: dict[str, str] = {}
    for dep in deps:
        path = dep if isinstance(dep, str) else next(iter(dep))
        if (root / path).is_file():
            out[path] = _md5_file(root / path)
        else:
            out[path] = produced.get(path) or own.get(path) or "missing"
    return out


def lineage_tags(stage: str) -> dict[str, str]:
    """Tags naming what a run of ``stage`` read: ``dvc_stage``, one ``dvc_dep.<path>`` per
    dependency and ``dvc_deps_md5``, one hash over all of them (equal tags, equal inputs)."""
    hashes = stage_input_hashes(stage)
    listing = "".join(f"{path} {digest}\n" for path, digest in sorted(hashes.items()))
    return {
        "dvc_stage": stage,
        **{f"dvc_dep.{path}": digest for path, digest in hashes.items()},
        "dvc_deps_md5": hashlib.md5(listing.encode()).hexdigest(),
    }


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


def data_version(root: Path, sources: Sequence[str], fallback: list[Path]) -> str:
    """The version of the data a model was trained and evaluated on (the ``data_version`` tag).

    The data loop's per-source versions when it recorded them (``data_version`` in
    ``data/raw/<source>.version.json`` or ``data/reports/ingest_<source>.json``), joined as
    ``source=version``; else ``sha:`` + :func:`data_hash` of the ``fallback`` files the stage read.
    """
    found = []
    for source in sources:
        for path in (
            root / f"data/raw/{source}.version.json",
            root / f"data/reports/ingest_{source}.json",
        ):
            try:
                version = json.loads(path.read_text(encoding="utf-8")).get("data_version")
            except (OSError, ValueError, AttributeError):
                continue
            if version:
                found.append(f"{source}={version}")
                break
    return ",".join(found) if found else f"sha:{data_hash(fallback)}"


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
