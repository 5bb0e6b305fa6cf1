"""DVC's own cost of a no-op ``dvc repro`` on this machine: ``python -m bench.dvc_floor``.

Issue 11 asks for a no-op ``dvc repro`` under 3 s. This bench separates what DVC itself costs
from what the project's stages add. It builds scratch git + DVC repositories (temp folders; no
data, no mirror) and times a no-op ``dvc repro`` in each:

- **one stage**: a single ``cp`` stage with one dep and one out, the least DVC can do;
- **the project's graph, empty**: the project's own ``dvc.yaml`` and ``sources/dvc.yaml`` and
  ``params.yaml``, stage for stage (same names, deps, params sections, outs, flags, the two
  ``always_changed`` source stages), but every command replaced by ``true`` and every dep and
  out a tiny file; a directory dep or out holds as many tiny files as the committed
  ``dvc.lock`` records for it (``nfiles``), so DVC hashes as many files as it does for real;
- **the project's graph, empty, dvc status**: the same repository's ``dvc status``.

The project's real no-op (``python -m bench.ctg --skip-stages --skip-branch``, after
``make pipeline``) adds to the second row only what the stages' commands and real files cost.
Median of ``--repeats`` runs; CPU is user + system of ``dvc`` and its children.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bench.scratch import BIN, ROOT, timed_dvc

STAGE_FILES = ("dvc.yaml", "sources/dvc.yaml")  # the project's stage files, as DVC reads them
TRIVIAL_CMD = "true"  # a command that does nothing, so only DVC's own work is timed
ENTRY_KEYS = ("deps", "outs", "metrics", "plots")  # a stage's keys that list paths
OUT_KEYS = ("outs", "metrics", "plots")  # the keys whose files DVC removes before a run


def _dvc(repo: Path, *args: str) -> tuple[float, float, str]:
    return timed_dvc(repo, {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}, *args)


def _init(repo: Path) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")


def _path_of(entry: str | dict[str, Any]) -> str:
    """The path of a ``deps``/``outs`` entry of dvc.yaml (a string or a one-key mapping)."""
    return entry if isinstance(entry, str) else next(iter(entry))


def dir_file_counts(root: Path = ROOT) -> dict[str, int]:
    """Directory path -> number of files, from the committed lock files' ``nfiles``."""
    counts: dict[str, int] = {}
    for name in STAGE_FILES:
        lock = root / Path(name).with_suffix(".lock")
        if not lock.exists():
            continue
        for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
            for entry in [*stage.get("deps", []), *stage.get("outs", [])]:
                if entry.get("nfiles"):
                    counts[entry["path"]] = int(entry["nfiles"])
    return counts


def trivial_cmd(stage: dict[str, Any]) -> str:
    """A command that does nothing but leave the stage's outputs in place.

    DVC removes a stage's outputs (unless ``persist``) before it runs the command, so an
    ``always_changed`` stage with a report would fail "output does not exist" after ``true``;
    ``touch`` of its non-persisted files is as cheap.
    """
    removed = [
        _path_of(e)
        for key in OUT_KEYS
        for e in stage.get(key, [])
        if not (isinstance(e, dict) and next(iter(e.values())).get("persist"))
    ]
    return f"touch {' '.join(sorted(removed))}" if removed else TRIVIAL_CMD


def empty_graph(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """The project's stage files with every command replaced by :func:`trivial_cmd`."""
    files = {}
    for name in STAGE_FILES:
        doc = yaml.safe_load((root / name).read_text())
        for stage in doc["stages"].values():
            stage["cmd"] = trivial_cmd(stage)
        files[name] = doc
    return files


def _fill(path: Path, n_files: int) -> None:
    """Make ``path`` a directory holding ``n_files`` tiny files in all (nested ones count)."""
    path.mkdir(parents=True, exist_ok=True)
    have = sum(1 for p in path.rglob("*") if p.is_file())
    for i in range(have, n_files):
        (path / f"f{i}").write_text(f"{i}\n")


def make_empty_project(repo: Path, root: Path = ROOT) -> int:
    """Build the project's graph with empty commands in ``repo``; returns the stage count.

    Every dep and out exists (tiny files; directories with their ``nfiles``) and ``dvc commit``
    records them, so the next ``dvc repro`` has nothing to do but the ``always_changed`` stages.
    """
    _init(repo)
    graph, counts = empty_graph(root), dir_file_counts(root)
    (repo / "params.yaml").write_text((root / "params.yaml").read_text())
    paths: set[str] = set()
    for name, doc in graph.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(yaml.safe_dump(doc, sort_keys=False))
        for stage in doc["stages"].values():
            paths.update(_path_of(e) for key in ENTRY_KEYS for e in stage.get(key, []))
    # deepest first, so a directory counts the files its nested directory deps already hold
    for p in sorted(paths, key=lambda s: -s.count("/")):
        target = repo / p
        if p in counts:
            _fill(target, counts[p])
        elif not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}\n" if p.endswith(".json") else "x\n")
    _dvc(repo, "commit", "-f", "-q")
    return sum(len(doc["stages"]) for doc in graph.values())


def make_one_stage(repo: Path) -> None:
    """The least DVC can check: one ``cp`` stage, one dep, one out, already run."""
    _init(repo)
    (repo / "a.txt").write_text("a\n")
    _dvc(repo, "stage", "add", "-q", "-n", "copy", "-d", "a.txt", "-o", "b.txt", "cp a.txt b.txt")
    _dvc(repo, "repro", "-q")


def _median(repo: Path, repeats: int, *args: str) -> tuple[float, float]:
    runs = [_dvc(repo, *args) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def bench_floor(repeats: int = 5) -> list[tuple[str, int, float, float]]:
    """(repository, stages, median wall s, median CPU s) of each row (see the module doc)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_dvc_floor_") as tmp:
        one, empty = Path(tmp, "one"), Path(tmp, "empty")
        make_one_stage(one)
        rows.append(("one stage, dvc repro", 1, *_median(one, repeats, "repro")))
        n = make_empty_project(empty)
        _dvc(empty, "repro")  # the source stages' first run writes their lock
        rows.append(("the project's graph, empty commands, dvc repro", n,
                     *_median(empty, repeats, "repro")))  # fmt: skip
        rows.append(("the project's graph, empty commands, dvc status", n,
                     *_median(empty, repeats, "status")))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dvc_floor", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="runs per row (median)")
    args = parser.parse_args(argv)
    print("| repository | stages | wall s | CPU s | load (1 min) |\n|---|---:|---:|---:|---:|")
    for what, n, wall, cpu in bench_floor(args.repeats):
        print(f"| {what} | {n} | {wall:.2f} | {cpu:.2f} | {os.getloadavg()[0]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
