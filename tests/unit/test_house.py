"""House rules that a reviewer would otherwise check by hand (see tests/import_graph.py).

- each DVC stage's code deps in dvc.yaml are exactly its import closure;
- no import cycles, function-level imports included;
- no module imports a stage module (only a stage's own ``python -m`` runs it): helpers never
  import stages, and two stages share code through a helper;
- no module over 500 lines; only ``stages/common/registry/tracking.py`` imports mlflow;
- data locations are named once, in the paths modules (``stages/ctg/paths.py``,
  ``stages/ultrasound/paths.py``; the shared folders where they live in ``stages/common/``),
  and each one is declared in dvc.yaml unless it is untracked (``data/runs``).

Each rule is also run on a small synthetic project where it must fail.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import yaml

from tests import import_graph as ig

pytestmark = pytest.mark.unit

MAX_MODULE_LINES = 500
MLFLOW_HOME = "stages/common/registry/tracking.py"
PATHS_MODULES = ("stages/ctg/paths.py", "stages/ultrasound/paths.py")
SHARED_DATA_DIRS = {
    ("stages/common/io.py", "RUNS_DIR"),
    ("stages/common/intake/sources.py", "SOURCES_DIR"),
}
UNTRACKED = ("data/runs",)  # run reports and GX Data Docs: git-ignored, no stage declares them


def stage_module_names(root: Path = ig.ROOT) -> set[str]:
    return set(ig.stage_modules({"stages": ig.pipeline_stages(root)}).values())


def modules_importing_stages(root: Path = ig.ROOT) -> list[str]:
    """Imports of a stage module by any other module (a stage runs only as ``python -m``)."""
    stages = stage_module_names(root)
    return [
        f"{module}:{imp.line} imports stage {imp.target}"
        for module, imports in ig.graph(root).items()
        for imp in imports
        if imp.target in stages
    ]


def _data_paths(node: ast.AST) -> list[str]:
    """The ``"data..."`` strings of the ``Path(...)`` calls inside ``node``."""
    return [
        call.args[0].value
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "Path"
        and call.args
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
        and (call.args[0].value == "data" or call.args[0].value.startswith("data/"))
    ]


def _module_constants(path: Path) -> list[tuple[str, int, str]]:
    """Module-level ``NAME = ...Path("data...")...``: (name, line, data path)."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign) and node.value is not None
            else []
        )
        for target in targets:
            for data in _data_paths(node.value):
                found.append((ast.unparse(target), node.lineno, data))
    return found


def data_constants_outside_paths_modules(root: Path = ig.ROOT) -> list[str]:
    """Data path constants a stage or helper defines instead of importing them."""
    wrong = []
    for path in sorted((root / "stages").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in PATHS_MODULES:
            continue
        for name, line, data in _module_constants(path):
            if (rel, name) not in SHARED_DATA_DIRS:
                wrong.append(f"{rel}:{line} {name} = Path({data!r})")
    return wrong


def declared_data_paths(root: Path = ig.ROOT) -> set[str]:
    """The deps, outs, metrics and plots of every stage in the stage files."""
    stages = ig.pipeline_stages(root)
    return {
        (next(iter(item)) if isinstance(item, dict) else str(item)).rstrip("/")
        for stage in stages.values()
        for key in ("deps", "outs", "metrics", "plots")
        for item in stage.get(key, [])
    }


def undeclared_data_paths(root: Path = ig.ROOT) -> list[str]:
    """Paths-module data paths that no stage declares: not a declared path, not inside a
    declared folder, not a folder holding declared files, and not untracked."""
    declared = declared_data_paths(root)
    modules = [*PATHS_MODULES, *sorted({rel for rel, _ in SHARED_DATA_DIRS})]
    wrong = []
    for rel in modules:
        for name, line, data in _module_constants(root / rel):
            data = data.rstrip("/")
            if any(data == u or data.startswith(u + "/") for u in UNTRACKED):
                continue
            if not any(
                data == d or data.startswith(d + "/") or d.startswith(data + "/") for d in declared
            ):
                wrong.append(f"{rel}:{line} {name} = Path({data!r})")
    return wrong


# --------------------------------------------------------------------------- the real tree


def test_stage_code_deps_are_exactly_their_import_closure() -> None:
    wrong = ig.disagreements()
    assert not wrong, (
        "dvc.yaml code deps differ from the import graph "
        "(run `python -m tests.import_graph --write`):\n"
        + "\n".join(f"{s}: missing {m}, not imported {x}" for s, (m, x) in wrong.items())
    )


def test_no_import_cycles() -> None:
    assert ig.cycles(ig.graph()) == []


def test_no_module_imports_a_stage_module() -> None:
    # helpers never import stages, and a stage shares code with another through a helper
    assert modules_importing_stages() == []


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(ig.ROOT)): n
        for folder in ("stages", "flows", "bench", "tests")
        for p in (ig.ROOT / folder).rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_only_the_tracking_module_imports_mlflow() -> None:
    importers = []
    for folder in ("stages", "flows"):
        for path in (ig.ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                    importers.append(str(path.relative_to(ig.ROOT)))
    assert sorted(set(importers)) == [MLFLOW_HOME]


def test_data_paths_are_defined_only_in_the_paths_modules() -> None:
    assert data_constants_outside_paths_modules() == [], (
        "import the data locations from stages/ctg/paths.py or stages/ultrasound/paths.py"
    )


def test_every_data_path_is_declared_in_dvc_yaml() -> None:
    assert undeclared_data_paths() == []


# --------------------------------------------------------------------------- the rules can fail


def _project(tmp_path: Path, files: dict[str, str], pipeline: dict) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (tmp_path / "flows").mkdir(exist_ok=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return tmp_path


FILES = {
    "stages/__init__.py": '"""docstring only"""\n',
    "stages/geo.py": "import numpy\nfrom stages import plots\n",
    "stages/plots.py": "X = 1\n",
    "stages/fit.py": "from stages.geo import *\n\ndef main():\n    pass\n",
    "stages/pkg/__init__.py": "from stages.pkg.core import thing\n",
    "stages/pkg/core.py": "thing = 1\n",
    "stages/use_pkg.py": "def main():\n    import stages.pkg.core\n",
}
PIPELINE = {
    "stages": {
        "fit": {"cmd": "python -m stages.fit", "deps": ["stages/fit.py", "stages/geo.py"]},
        "use_pkg": {
            "cmd": "python -m stages.use_pkg",
            "deps": ["stages/use_pkg.py", "stages/pkg/core.py", "data/x"],
        },
    }
}


def test_closure_follows_transitive_function_level_and_package_imports(tmp_path: Path) -> None:
    root = _project(tmp_path, FILES, PIPELINE)
    assert ig.expected_code_deps("stages.fit", root) == [
        "stages/fit.py",
        "stages/geo.py",
        "stages/plots.py",  # through geo; the docstring-only stages/__init__.py is left out
    ]
    assert ig.expected_code_deps("stages.use_pkg", root) == [
        "stages/pkg/__init__.py",  # it holds code: importing stages.pkg.core runs it
        "stages/pkg/core.py",
        "stages/use_pkg.py",
    ]


def test_deps_check_names_a_missing_and_a_stale_dependency(tmp_path: Path) -> None:
    root = _project(tmp_path, FILES, PIPELINE)
    wrong = ig.disagreements(root)
    assert wrong["fit"] == (["stages/plots.py"], [])
    assert wrong["use_pkg"] == (["stages/pkg/__init__.py"], [])
    pipeline = {"stages": {"fit": {**PIPELINE["stages"]["fit"]}}}
    pipeline["stages"]["fit"]["deps"] = [
        "stages/fit.py",
        "stages/geo.py",
        "stages/plots.py",
        "stages/pkg/core.py",
    ]
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    assert ig.disagreements(root) == {"fit": ([], ["stages/pkg/core.py"])}


def test_write_brings_dvc_yaml_in_line_and_keeps_data_deps(tmp_path: Path) -> None:
    root = _project(tmp_path, FILES, PIPELINE)
    text = (root / "dvc.yaml").read_text().replace("- data/x", "- data/x  # the input")
    (root / "dvc.yaml").write_text(text)
    assert sorted(ig.write_code_deps(root)) == ["fit", "use_pkg"]
    assert ig.disagreements(root) == {}
    written = (root / "dvc.yaml").read_text()
    assert "- data/x # the input" in written
    assert yaml.safe_load(written)["stages"]["use_pkg"]["deps"][0] == "stages/use_pkg.py"
    assert ig.write_code_deps(root) == []  # idempotent


def test_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    files = {
        **FILES,
        "stages/plots.py": "def figure():\n    from stages.geo import X\n",
    }
    assert ig.cycles(ig.graph(_project(tmp_path, files, PIPELINE))) == [
        ["stages.geo", "stages.plots"]
    ]


def test_helper_importing_a_stage_is_found(tmp_path: Path) -> None:
    files = {**FILES, "stages/plots.py": "from stages.fit import main\n"}
    root = _project(tmp_path, files, PIPELINE)
    assert modules_importing_stages(root) == ["stages.plots:1 imports stage stages.fit"]


def test_a_data_constant_in_a_stage_is_found(tmp_path: Path) -> None:
    files = {
        **FILES,
        "stages/fit.py": 'from pathlib import Path\n\nOUT = Path("data/x")\nN = Path("model")\n',
        "stages/ctg/paths.py": 'from pathlib import Path\n\nX = Path("data/x")\n',
    }
    root = _project(tmp_path, files, PIPELINE)
    assert data_constants_outside_paths_modules(root) == ["stages/fit.py:3 OUT = Path('data/x')"]


def test_an_undeclared_data_path_is_found(tmp_path: Path) -> None:
    paths = """\
        from pathlib import Path

        X = Path("data/x/inside.csv")
        RUNS = Path("data/runs/gx")
        NEW = Path("data/y.csv")
        """
    files = {
        **FILES,
        "stages/ctg/paths.py": paths,
        "stages/ultrasound/paths.py": 'from pathlib import Path\n\nD = Path("data")\n',
        "stages/common/io.py": 'from pathlib import Path\n\nRUNS_DIR = Path("data/runs")\n',
        "stages/common/intake/sources.py": "",
    }
    root = _project(tmp_path, files, PIPELINE)
    assert undeclared_data_paths(root) == ["stages/ctg/paths.py:5 NEW = Path('data/y.csv')"]


@pytest.mark.parametrize("module", sorted(stage_module_names()))
def test_every_stage_module_runs_its_main(module: str) -> None:
    """``python -m <stage>`` must call ``main()``: dvc.yaml runs each stage that way."""
    tree = ast.parse(ig.module_files()[module].read_text(encoding="utf-8"))
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    guards = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert mains and guards and "main()" in ast.unparse(guards[0])
