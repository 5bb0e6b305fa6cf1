"""Reading ``params.yaml``: the only home of hyper-parameters, thresholds and data sources.

Paths are resolved against the project root (the folder holding ``params.yaml``), which is the
working directory DVC runs stages in. ``FETAL_PROJECT_ROOT`` overrides it (tests run stages on a
toy copy of the repository).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def project_root() -> Path:
    """Folder holding ``params.yaml``: ``FETAL_PROJECT_ROOT`` or the nearest ancestor of the cwd."""
    env = os.environ.get("FETAL_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file():
            return folder
    return here


def load_params(section: str | None = None, path: Path | None = None) -> dict[str, Any]:
    """Return one section of ``params.yaml`` (or all of it when ``section`` is None).

    Raises
    ------
    KeyError
        When the section is missing: a stage must never run on silent defaults.
    """
    params_path = path or project_root() / "params.yaml"
    with open(params_path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if section is None:
        return params
    if section not in params:
        raise KeyError(f"params.yaml has no section {section!r} (file: {params_path})")
    return params[section]


def mirror_dir(dataset: str) -> Path | None:
    """Local mirror folder of an official data set, or None to use the official source.

    ``FETAL_MIRROR`` names a folder holding one sub-folder per data set (``ctu-uhb``,
    ``fetal_planes``, ``hc18``), laid out as the official sources are. A mirror is a location,
    not a parameter: its files are checksummed against the official ones, so results do not
    depend on it, which is why it comes from the environment and not from ``params.yaml``.
    """
    root = os.environ.get("FETAL_MIRROR", "").strip()
    if not root:
        return None
    return resolve_mirror(root, project_root()) / dataset


def resolve_mirror(setting: str, root: Path) -> Path:
    """The mirror folder named by a ``FETAL_MIRROR`` value: a relative one is read from ``root``.

    The README writes ``FETAL_MIRROR=../shared/data``, relative to the project root. The Makefile
    and the test session (``tests/conftest.py``) turn it absolute once, against the real project
    root, so that a stage run in a toy copy of the repository reads the same mirror.
    """
    path = Path(setting).expanduser()
    return path if path.is_absolute() else (root / path).resolve()
