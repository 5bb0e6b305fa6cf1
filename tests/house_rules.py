"""House rules on the source tree, read with ``ast`` (nothing is imported).

- :func:`crowded_folders`: a folder of code holds at most :data:`MAX_MODULES` modules;
- :func:`long_functions`: a product function (``stages/``, ``flows/``) has at most
  :data:`MAX_FUNCTION_LINES` lines, its docstring not counted;
- :func:`params_fallbacks`: no ``x.get("key", default)`` where ``key`` is a key of ``params.yaml``
  in product code: settings are typed and loaded once (``stages/common/settings.py``), so a
  default in code could only disagree with the file.

``tests/unit/test_house_layout.py`` runs each on the real tree and on planted violations.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("stages", "flows")
CODE_FOLDERS = ("stages", "flows", "bench", "experiments")
MAX_MODULES = 15
MAX_FUNCTION_LINES = 60


def _py_files(root: Path, folders: Iterable[str]) -> Iterator[Path]:
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def crowded_folders(root: Path = ROOT, limit: int = MAX_MODULES) -> dict[str, int]:
    """Folders holding more than ``limit`` modules (``__init__.py`` not counted)."""
    counts: dict[str, int] = {}
    for path in _py_files(root, CODE_FOLDERS):
        if path.name != "__init__.py":
            rel = path.parent.relative_to(root).as_posix()
            counts[rel] = counts.get(rel, 0) + 1
    return {k: v for k, v in sorted(counts.items()) if v > limit}


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function from ``def`` to its end, less its docstring."""
    lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
    first = node.body[0] if node.body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        lines -= first.end_lineno - first.lineno + 1  # type: ignore[operator]
    return lines


def long_functions(root: Path = ROOT, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``path:function`` -> lines, for product functions longer than ``limit``."""
    found = {}
    for path in _py_files(root, PRODUCT):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := function_lines(node)) > limit:
                    found[f"{path.relative_to(root).as_posix()}:{node.name}"] = n
    return found


def params_keys(root: Path = ROOT) -> set[str]:
    """Every key, at any depth, of ``params.yaml``."""
    keys: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                keys.add(str(k))
                walk(v)

    walk(yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8")))
    return keys


def params_fallbacks(root: Path = ROOT) -> list[str]:
    """``path:line call`` for each ``.get("params key", default)`` in product code."""
    keys = params_keys(root)
    found = []
    for path in _py_files(root, PRODUCT):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in keys
            ):
                found.append(
                    f"{path.relative_to(root).as_posix()}:{node.lineno} {ast.unparse(node)}"
                )
    return found
