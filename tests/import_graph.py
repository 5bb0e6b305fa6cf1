"""The project's import graph, read from the source with ``ast`` (nothing is imported).

One source of truth for each DVC stage's code dependencies: the stage's own module plus every
project module it imports, transitively, at module level or inside functions. ``dvc.yaml`` (and
``sources/dvc.yaml``, the source checks) lists exactly those files;
``tests/unit/test_house.py`` fails when the two disagree, and

    python -m tests.import_graph            # print each stage's code deps that disagree
    python -m tests.import_graph --write    # rewrite them in dvc.yaml (comments kept)

brings ``dvc.yaml`` back in line. A package's ``__init__.py`` counts as a dependency only when it
holds code (an empty or docstring-only one cannot change a result).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "stages",
    "flows",
    "experiments",
)  # the project's importable code (experiments: research, may import stages)
# The pipeline's stage files (paths in both are the project root's: sources/ has ``wdir: ..``)
PIPELINE_FILES = ("dvc.yaml", "sources/dvc.yaml")
CODE_SUFFIX = ".py"


@dataclass(frozen=True)
class Import:
    """One import statement of a project module."""

    target: str  # dotted module name
    line: int
    in_function: bool


def module_files(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` stands for (a module, or a package's ``__init__``)."""
    return name if name in modules else None


def imports_of(path: Path, module: str, modules: dict[str, Path]) -> list[Import]:
    """Project modules imported by the file ``path`` (module name ``module``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(child, ast.Import):
                for alias in child.names:
                    # `import a.b.c` imports a, a.b and a.b.c
                    parts = alias.name.split(".")
                    for i in range(1, len(parts) + 1):
                        target = _resolve(".".join(parts[:i]), modules)
                        if target:
                            found.append(Import(target, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                parts = base.split(".")
                for i in range(1, len(parts) + 1):
                    target = _resolve(".".join(parts[:i]), modules)
                    if target:
                        found.append(Import(target, child.lineno, in_function))
                for alias in child.names:  # `from pkg import submodule`
                    target = _resolve(f"{base}.{alias.name}", modules)
                    if target:
                        found.append(Import(target, child.lineno, in_function))
            elif isinstance(child, ast.Call) and _is_dynamic_import(child):
                arg = child.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    target = _resolve(arg.value, modules)
                    if target:
                        found.append(Import(target, child.lineno, True))
            visit(child, nested)

    visit(tree, False)
    return [i for i in found if i.target != module]


def _is_dynamic_import(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "import_module" and bool(call.args)


def graph(root: Path = ROOT) -> dict[str, list[Import]]:
    """Module -> the project modules it imports (direct imports only)."""
    modules = module_files(root)
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def closure(start: str, edges: dict[str, list[Import]]) -> set[str]:
    """``start`` and every project module it imports, transitively."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]))
        todo.extend(i.target for i in edges.get(name, []))
    return {name for name in seen if name in edges}


def cycles(edges: dict[str, list[Import]]) -> list[list[str]]:
    """Import cycles (each as the list of modules around it), function-level imports included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in {i.target for i in edges.get(v, [])}:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return found


def holds_code(path: Path) -> bool:
    """False for an empty or docstring-only file (an ``__init__.py`` that changes nothing)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def pipeline_stages(root: Path = ROOT) -> dict[str, dict]:
    """Every stage of the pipeline's stage files (:data:`PIPELINE_FILES` present under
    ``root``), by name: the graph ``dvc repro`` runs."""
    import yaml

    stages: dict[str, dict] = {}
    for name in PIPELINE_FILES:
        if (root / name).is_file():
            stages |= yaml.safe_load((root / name).read_text())["stages"]
    return stages


def stage_modules(pipeline: dict) -> dict[str, str]:
    """DVC stage name -> the module its ``cmd`` runs (``python -m MODULE``)."""
    found = {}
    for name, stage in pipeline.get("stages", {}).items():
        words = str(stage.get("cmd", "")).split()
        if "-m" in words:
            found[name] = words[words.index("-m") + 1]
    return found


def expected_code_deps(module: str, root: Path = ROOT) -> list[str]:
    """The files a stage running ``module`` depends on: its import closure, as repo paths."""
    edges = graph(root)
    files = module_files(root)
    paths = [
        files[name]
        for name in closure(module, edges)
        if files[name].name != "__init__.py" or holds_code(files[name])
    ]
    return sorted(str(p.relative_to(root)) for p in paths)


def is_code_dep(dep: str) -> bool:
    return dep.endswith(CODE_SUFFIX) and dep.split("/")[0] in PACKAGES


def declared_code_deps(stage: dict) -> list[str]:
    deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
    return sorted(d for d in deps if is_code_dep(d))


def disagreements(root: Path = ROOT) -> dict[str, tuple[list[str], list[str]]]:
    """Stage -> (missing from dvc.yaml, listed but not imported), for stages that disagree."""
    pipeline = {"stages": pipeline_stages(root)}
    out = {}
    for name, module in stage_modules(pipeline).items():
        want = set(expected_code_deps(module, root))
        have = set(declared_code_deps(pipeline["stages"][name]))
        if want != have:
            out[name] = (sorted(want - have), sorted(have - want))
    return out


def write_code_deps(root: Path = ROOT) -> list[str]:
    """Rewrite each stage's code deps in the stage files from the import graph; the stages changed.

    Code deps come first (the stage's module, then its imports, sorted), data deps keep their
    order and comments. ruamel.yaml (a DVC dependency) round-trips the rest of the file.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)
    changed = []
    for file in PIPELINE_FILES:
        if (root / file).is_file():
            changed += _write_file_code_deps(yaml, root / file, root)
    return changed


def _write_file_code_deps(yaml: Any, path: Path, root: Path) -> list[str]:
    doc = yaml.load(path.read_text())
    changed = []
    for name, module in stage_modules(doc).items():
        deps = doc["stages"][name].get("deps")
        want = expected_code_deps(module, root)
        own = str(Path(*module.split("."))) + CODE_SUFFIX
        want = [own, *[d for d in want if d != own]]
        current = [d for d in deps if isinstance(d, str) and is_code_dep(d)]
        if current == want:
            continue
        data = [d for d in deps if not (isinstance(d, str) and is_code_dep(d))]
        keep_comments = {d: deps.ca.items.get(i) for i, d in enumerate(deps) if isinstance(d, str)}
        deps.clear()
        deps.ca.items.clear()
        for item in [*want, *data]:
            deps.append(item)
            comment = keep_comments.get(item) if isinstance(item, str) else None
            if comment:
                deps.ca.items[len(deps) - 1] = comment
        changed.append(name)
    if changed:
        tmp = path.with_suffix(".yaml.tmp")
        with tmp.open("w") as fh:
            yaml.dump(doc, fh)
        tmp.replace(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_code_deps()
        print("updated: " + (", ".join(changed) if changed else "nothing"))
        return 0
    wrong = disagreements()
    for name, (missing, extra) in wrong.items():
        print(f"{name}:\n  missing: {missing}\n  not imported: {extra}")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
