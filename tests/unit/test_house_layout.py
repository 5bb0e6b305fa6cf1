"""The layout rules of ``tests/house_rules.py`` on the real tree, and each on a planted violation.

``KNOWN_*`` are the violations left from before the rules existed: the move to the new layout
empties them (each entry is a place to fix, never a place to add).
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from tests import house_rules as hr

pytestmark = pytest.mark.unit

KNOWN_CROWDED: dict[str, int] = {}
KNOWN_LONG: dict[str, int] = {}
KNOWN_FALLBACKS: dict[str, int] = {}


def test_no_folder_holds_more_than_15_modules() -> None:
    assert hr.crowded_folders() == KNOWN_CROWDED


def test_no_product_function_is_longer_than_60_lines() -> None:
    long = hr.long_functions()
    assert {k: v for k, v in long.items() if k not in KNOWN_LONG} == {}
    assert set(long) == set(KNOWN_LONG), "fixed: remove them from KNOWN_LONG"


def test_no_params_fallback_in_product_code() -> None:
    found = Counter(line.split(":")[0] for line in hr.params_fallbacks())
    assert dict(found) == KNOWN_FALLBACKS


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(textwrap.dedent(text))
    return tmp_path


def test_a_crowded_folder_is_found(tmp_path: Path) -> None:
    files = {f"stages/room/m{i}.py": "" for i in range(16)} | {"stages/room/__init__.py": ""}
    assert hr.crowded_folders(_tree(tmp_path, files)) == {"stages/room": 16}
    assert hr.crowded_folders(_tree(tmp_path, {}), limit=16) == {}


def test_a_long_function_is_found_and_its_docstring_is_not_counted(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    doc = '    """' + "\n" * 30 + '    """\n'
    files = {
        "stages/a.py": f"def short():\n{doc}{body}",  # 60 lines of code: allowed
        "flows/b.py": f"def long():\n{body}    y = 1\n",  # 61
    }
    assert hr.long_functions(_tree(tmp_path, files)) == {"flows/b.py:long": 61}


def test_a_params_fallback_is_found(tmp_path: Path) -> None:
    files = {
        "params.yaml": "train_x:\n  seed: 1\n  augment: {flip: 0.5}\n",
        "stages/a.py": "def f(p, r):\n    return p.get('flip', 0), r.get('n_img', 0), p['seed']\n",
    }
    assert hr.params_fallbacks(_tree(tmp_path, files)) == ["stages/a.py:2 p.get('flip', 0)"]
