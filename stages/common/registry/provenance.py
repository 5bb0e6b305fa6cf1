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


# What a registered model needs installed beside the project itself (a version stores no code:
# it names an installed loader). One list for both modalities.
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


def file_digests(folder: str | Path) -> dict[str, str]:
    """SHA-256 (hex) of every file below ``folder``, by POSIX path relative to it.

    What a registered version's artifacts are checked against when it is loaded (every file,
    so a changed, missing or added file is seen), and half of its identity (the model folder).
    """
    folder = Path(folder)
    out: dict[str, str] = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[f.relative_to(folder).as_posix()] = h.hexdigest()
    return out


def digest_problems(expected: dict[str, str], found: dict[str, str]) -> list[str]:
    """What differs between recorded and found digests, one line per file (empty: identical):
    ``modified: PATH``, ``missing: PATH`` (recorded, not found), ``unexpected: PATH`` (found, never
    recorded)."""
    problems = [
        f"modified: {p}" for p in sorted(set(expected) & set(found)) if expected[p] != found[p]
    ]
    problems += [f"missing: {p}" for p in sorted(set(expected) - set(found))]
    return problems + [f"unexpected: {p}" for p in sorted(set(found) - set(expected))]


def registration_key(model_dir: str | Path, loader: str, items_csv: bytes, scoring: Any) -> str:
    """The identity of a registered version: SHA-256 of the model folder's files (paths and
    bytes), the loader that reads them, the per-item evaluation (CSV bytes) and how it is scored
    (``scoring``: metric, method, ...). Same bytes, same version: a rerun, a crash and a rerun,
    or the same model trained again bit for bit on another machine all find the version already
    registered; a model that differs in one byte, or was evaluated on other items, is new."""
    h = hashlib.sha256()
    for path, digest in file_digests(model_dir).items():
        h.update(f"file {path} {digest}\n".encode())
    h.update(f"loader {loader}\n".encode())
    h.update(json.dumps(scoring, sort_keys=True, default=str).encode() + b"\n")
    h.update(hashlib.sha256(items_csv).hexdigest().encode())
    return h.hexdigest()
