"""``make quickstart``: the whole loop on a small, fixed subset of the mirror, in minutes.

Every DVC stage, ``dvc push``, the champion decisions, the run summary and one Prefect flow run,
on the subset and short training that ``quickstart/params.yaml`` sets (a smoke run: its figures
show that the machinery works; they are not results). It runs in its own workspace,
``.quickstart/`` (git-ignored), and never touches the full run's outputs, DVC cache or remote,
or MLflow registry:

1. ``.quickstart/`` is made afresh: a copy of the project's files (tracked, or new and not
   git-ignored; the working tree's versions, so local edits are in), without the full run's
   ``dvc.lock`` files and committed reports; its ``params.yaml`` is the project's with
   ``quickstart/params.yaml`` deep-merged onto it (:func:`deep_merge`: a key params.yaml no
   longer has stops the quickstart, named);
   its own git repository (the registry tags each version with a commit), its own DVC cache
   (``.quickstart/.dvc/cache``) and remote (``.quickstart/.dvc-remote``).
2. ``python -m flows.training`` runs there, as a flow run named ``quickstart (smoke run)``, with
   its own MLflow store (``sqlite:///.quickstart/mlflow.db``) and the project's Prefect home (the
   one ``prefect.toml`` names, or ``PREFECT_HOME``), so ``make ui`` shows the run.
3. The summary is printed, with the wall time and the workspace's size on disk.

Needs ``FETAL_MIRROR`` (a local mirror: the official ultrasound archives alone take longer to
download than the whole quickstart). Exit status: the training flow's, or 2 before it starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

OVERRIDES = Path("quickstart/params.yaml")
WORKSPACE = ".quickstart"
RUN_NAME = "quickstart (smoke run)"
LEFT_OUT = ("dvc.lock", "sources/dvc.lock")  # the workspace records its own lineage
REPORTS = "data/reports/"  # the full run's committed metrics: the workspace writes its own
MIRROR_SETS = ("ctu-uhb", "fetal_planes", "hc18")
DVC_LOCAL_CONFIG = """[core]
    remote = local
[cache]
    dir = cache
['remote "local"']
    url = ../.dvc-remote
"""


class OverrideError(KeyError):
    """An override names a key params.yaml does not have (or a section where it has a value)."""

    def __str__(self) -> str:
        return str(self.args[0])


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any], where: str = "") -> dict:
    """``base`` with ``overrides`` merged in: sections recursively, values (lists too) replaced.

    Raises
    ------
    OverrideError
        An override key ``base`` lacks, or a section where ``base`` has a value (or the reverse);
        the message names the dotted key.
    """
    out = dict(base)
    for key, value in overrides.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in base:
            raise OverrideError(f"{dotted}: params.yaml has no such key")
        if isinstance(value, Mapping) != isinstance(base[key], Mapping):
            kind = "a section" if isinstance(base[key], Mapping) else "a value"
            raise OverrideError(f"{dotted}: params.yaml has {kind} there")
        out[key] = deep_merge(base[key], value, dotted) if isinstance(value, Mapping) else value
    return out


def quickstart_params(root: Path) -> dict[str, Any]:
    """The workspace's params: ``params.yaml`` with :data:`OVERRIDES` merged onto it."""
    base = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    overrides = yaml.safe_load((root / OVERRIDES).read_text(encoding="utf-8")) or {}
    try:
        return deep_merge(base, overrides)
    except OverrideError as exc:
        raise OverrideError(f"{OVERRIDES}: {exc}; update {OVERRIDES} to params.yaml") from None


def prefect_home(root: Path) -> Path:
    """The project's Prefect home: ``PREFECT_HOME``, else ``prefect.toml``'s ``home`` read from
    ``root`` (as Prefect reads it in a process started there), else Prefect's default."""
    setting = os.environ.get("PREFECT_HOME", "").strip()
    if not setting and (root / "prefect.toml").is_file():
        setting = tomllib.loads((root / "prefect.toml").read_text()).get("home", "")
    home = Path(setting or "~/.prefect").expanduser()
    return (home if home.is_absolute() else root / home).resolve()


def tracked_files(root: Path) -> list[str]:
    """The project's files the workspace copies: tracked, or new and not git-ignored (``git
    ls-files``), less :data:`LEFT_OUT` and the committed reports."""
    argv = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"quickstart: {root} is not a git checkout: {proc.stderr.strip()}")
    names = [n for n in proc.stdout.split("\0") if n]
    return [n for n in names if n not in LEFT_OUT and not n.startswith(REPORTS)]


def make_workspace(root: Path, ws: Path, params: Mapping[str, Any]) -> None:
    """``ws`` afresh: the tracked files, the merged params, its own DVC cache, remote and git."""
    if ws.exists():
        shutil.rmtree(ws)
    for name in tracked_files(root):
        src, dst = root / name, ws / name
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
    (ws / "params.yaml").write_text(yaml.safe_dump(dict(params), sort_keys=False))
    (ws / ".dvc" / "config.local").write_text(DVC_LOCAL_CONFIG)
    git = ["git", "-c", "user.name=quickstart", "-c", "user.email=quickstart@localhost"]
    for argv in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "quickstart workspace"]):
        subprocess.run(git + argv, cwd=ws, check=True, capture_output=True)


def workspace_env(root: Path, ws: Path, mirror: Path) -> dict[str, str]:
    """The flow's environment: the workspace as project, its own MLflow store, the project's
    Prefect home, the mirror; no landing folder of the user's."""
    env = {k: v for k, v in os.environ.items() if k not in {"FETAL_LANDING"}}
    bin_dir = str(Path(sys.executable).parent)
    return env | {
        "FETAL_PROJECT_ROOT": str(ws),
        "FETAL_MIRROR": str(mirror),
        "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}",
        "PREFECT_HOME": str(prefect_home(root)),
        "PYTHONPATH": str(ws),
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    }


def check_mirror(setting: str, root: Path) -> Path:
    """The mirror folder (``FETAL_MIRROR``, relative to ``root``) holding the three data sets."""
    if not setting.strip():
        raise SystemExit(
            "quickstart: set FETAL_MIRROR to a local mirror of the sources, e.g. "
            "`FETAL_MIRROR=../shared/data make quickstart` (docs/data.md)"
        )
    mirror = Path(setting).expanduser()
    mirror = (mirror if mirror.is_absolute() else root / mirror).resolve()
    missing = [d for d in MIRROR_SETS if not (mirror / d).is_dir()]
    if missing:
        raise SystemExit(
            f"quickstart: FETAL_MIRROR={mirror} lacks {', '.join(m + '/' for m in missing)}"
        )
    return mirror


def disk_mb(folder: Path) -> float:
    """Space the files under ``folder`` take on disk (MB; hard links counted once)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        st = path.lstat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total / 1e6


def prepare(root: Path) -> tuple[Path, dict[str, str]] | str:
    """The workspace made and the flow's environment, or why the quickstart cannot start."""
    try:
        mirror = check_mirror(os.environ.get("FETAL_MIRROR", ""), root)
        params = quickstart_params(root)
    except (OverrideError, SystemExit) as exc:
        return str(exc) if str(exc).startswith("quickstart:") else f"quickstart: {exc}"
    ws = root / WORKSPACE
    print(f"quickstart: workspace {ws} (a smoke run: {OVERRIDES} on params.yaml)", flush=True)
    make_workspace(root, ws, params)
    return ws, workspace_env(root, ws, mirror)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.quickstart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    from stages.common.params import project_root

    start = time.perf_counter()
    ready = prepare(project_root())
    if isinstance(ready, str):
        print(ready, file=sys.stderr)
        return 2
    ws, env = ready
    print(f"quickstart: Prefect home {env['PREFECT_HOME']}; MLflow {env['MLFLOW_TRACKING_URI']}")
    flow = [sys.executable, "-m", "flows.training", "--run-name", RUN_NAME]
    code = subprocess.run(flow, cwd=ws, env=env).returncode
    summary = ws / "data" / "reports" / "summary.md"
    if summary.is_file():
        print("\n" + summary.read_text())
    outcome = "done" if code == 0 else f"FAILED (exit {code})"
    print(
        f"quickstart: {outcome} in {(time.perf_counter() - start) / 60:.1f} min; {ws} holds "
        f"{disk_mb(ws):.0f} MB. The flow run: `make ui`, run '{RUN_NAME}'. Its registry: "
        f"`make mlflow-ui MLFLOW_UI_STORE=sqlite:///{WORKSPACE}/mlflow.db`."
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
