"""``make bench`` runs every benchmark of ``bench/`` (issue 27), read from the Makefile's text.

A benchmark is a module of ``bench/`` that defines a top-level ``main()`` (found with ``ast``,
nothing imported); the others (``scratch.py``, ``cost_model.py``, ``__init__.py``) are helpers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_RE = re.compile(r"(?:^|\s)-m\s+bench\.(\w+)")
# the one bench that runs a real `dvc repro` of the project: last, after the read-only ones
LAST = "pipeline_times"

pytestmark = pytest.mark.unit


def bench_modules(bench_dir: Path) -> set[str]:
    """Names of the modules of ``bench_dir`` that define a top-level ``main()``."""
    found = set()
    for path in sorted(bench_dir.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        defs = (n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
        if any(n.name == "main" for n in defs):
            found.add(path.stem)
    return found


def recipe(makefile_text: str, target: str) -> list[str]:
    """The shell commands of ``target``'s recipe, continuations joined.

    Make's own comment lines (``#`` at the start of a line) and blank lines between recipe lines
    are skipped, as make skips them; a recipe line whose command is a shell comment runs nothing
    and is dropped too.
    """
    lines = makefile_text.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if re.match(rf"{re.escape(target)}\s*:(?!=)", ln)), None
    )
    assert start is not None, f"the Makefile has no target {target!r}"
    commands: list[str] = []
    pending = ""
    for line in lines[start + 1 :]:
        if pending:
            pending += " " + line.strip()
        elif line.startswith("\t"):
            pending = line[1:].strip()
        elif not line.strip() or line.startswith("#"):
            continue
        else:
            break  # the next rule or variable
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        command = pending.lstrip("@-+ ")
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def bench_runs(makefile_text: str) -> list[str]:
    """The ``bench.X`` modules the ``bench`` recipe runs, in order (``X`` only)."""
    return [m for cmd in recipe(makefile_text, "bench") for m in MODULE_RE.findall(cmd)]


# ------------------------------------------------------------------------ the real tree
def test_make_bench_runs_every_bench_module_exactly_once() -> None:
    runs = bench_runs((ROOT / "Makefile").read_text())
    wanted = bench_modules(ROOT / "bench")
    assert len(wanted) >= 2, "no bench modules found: the rule reads the wrong folder"
    assert sorted(set(runs)) == sorted(wanted), (
        f"make bench misses {sorted(wanted - set(runs))}, "
        f"runs modules without a main() {sorted(set(runs) - wanted)}"
    )
    assert len(runs) == len(set(runs)), f"make bench runs a module twice: {runs}"


def test_the_real_dvc_repro_runs_last() -> None:
    runs = bench_runs((ROOT / "Makefile").read_text())
    assert runs and runs[-1] == LAST, f"bench.{LAST} (a real dvc repro) must run last: {runs}"


def test_every_bench_module_is_documented() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    missing = [
        m for m in sorted(bench_modules(ROOT / "bench")) if f"python -m bench.{m}" not in text
    ]
    assert not missing, f"docs/benchmarks.md does not show how to run {missing}"


# ------------------------------------------------------------------------ the rule on planted trees
PLANTED_MAKEFILE = """\
PY := .venv/bin/python
bench: setup  ## the tables
\t$(PY) -m bench.alpha --repeats 3
# a make comment between recipe lines
\t@$(PY) -m bench.beta \\
\t    --long-option 1

\t# $(PY) -m bench.gamma   (a shell comment: runs nothing)
deploy: setup
\t$(PY) -m bench.delta
"""


def test_recipe_reader_on_a_planted_makefile() -> None:
    assert bench_runs(PLANTED_MAKEFILE) == ["alpha", "beta"]
    with pytest.raises(AssertionError, match="no target 'nope'"):
        recipe(PLANTED_MAKEFILE, "nope")


def test_a_helper_without_main_is_not_a_benchmark(tmp_path: Path) -> None:
    files = {
        "__init__.py": '"""Benchmarks."""\n',
        "timed.py": "def main() -> int:\n    return 0\n",
        "helper.py": "def run() -> None: ...\n\nclass C:\n    def main(self) -> None: ...\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert bench_modules(tmp_path) == {"timed"}
