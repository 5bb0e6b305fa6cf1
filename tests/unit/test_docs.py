"""README.md and docs/*.md against the code (the checks: :mod:`tests.doc_check`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.doc_check import (
    DOC_FILES,
    README_MAX_LINES,
    ROOT,
    RUN_FOR_REAL,
    check_markdown,
    documented_commands,
    dvc_stages,
    help_text,
    is_repo_module,
    markdown_links,
    module_exists,
    params,
    repo_env,
)

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------ tests: the docs
@pytest.fixture(scope="module", autouse=True)
def _prefetch_help() -> None:
    """Start every documented command's ``--help`` at once (each imports its stack: seconds)."""
    wanted: set[tuple[str, ...]] = {("stages.cli",)}
    for argv in documented_commands():
        if argv[:1] == ["fetal"] and len(argv) > 1 and not argv[1].startswith("-"):
            wanted.add(("stages.cli", argv[1]))
        elif argv[:1] in (["python"], ["python3"]) and argv[1:2] == ["-m"] and len(argv) > 2:
            if is_repo_module(argv[2]) and module_exists(argv[2]):
                wanted.add((argv[2],))
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(help_text, sorted(wanted)))


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_doc_commands_paths_and_links(doc: Path) -> None:
    problems = check_markdown(doc.read_text(), doc)
    assert not problems, "the docs drifted from the code:\n" + "\n".join(problems)


def test_readme_is_short() -> None:
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n < README_MAX_LINES, f"README.md has {n} lines; move detail to docs/"


def test_readme_links_every_docs_page() -> None:
    links = {t.partition("#")[0] for t in markdown_links((ROOT / "README.md").read_text())}
    pages = {p.relative_to(ROOT).as_posix() for p in DOC_FILES[1:]}
    assert pages <= links, f"docs pages not linked from the README: {sorted(pages - links)}"


def test_architecture_diagram_names_every_stage() -> None:
    readme = (ROOT / "README.md").read_text()
    diagram = re.search(r"(?ms)^```mermaid\n(.*?)^```", readme)
    assert diagram, "README.md has no mermaid architecture diagram"
    named = set(re.findall(r"\b([a-z]+(?:_[a-z]+)*_(?:ctg|us))\b", diagram.group(1)))
    assert named == set(dvc_stages()), (
        f"diagram vs dvc.yaml: missing {sorted(set(dvc_stages()) - named)}, "
        f"unknown {sorted(named - set(dvc_stages()))}"
    )


def test_quick_documented_commands_run() -> None:
    commands = {tuple(c) for c in documented_commands()} & RUN_FOR_REAL
    assert commands, f"none of {sorted(RUN_FOR_REAL)} is documented any more"
    bin_dir = Path(sys.executable).parent
    for argv in sorted(commands):
        if argv[0] == "fetal":
            cmd = [sys.executable, "-m", "stages.cli", *argv[1:]]
        else:
            cmd = [str(bin_dir / argv[0]), *argv[1:]]
        proc = subprocess.run(
            cmd, cwd=ROOT, env=repo_env(), capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stdout[-500:]}{proc.stderr[-500:]}"
        if argv == ("dvc", "dag"):
            assert all(stage in proc.stdout for stage in dvc_stages())
        if argv == ("fetal", "--help"):
            assert all(f"    {c}" in proc.stdout for c in ("payload-ctg", "summary", "promote"))


def test_the_documented_payload_command_writes_what_fetal_serve_takes(tmp_path: Path) -> None:
    """The README's ``fetal payload-ctg`` line, run as written (on the mirror's copy of the
    record when this checkout has no ``data/raw``): the last ``train_ctg.window_minutes`` of
    FHR and UC at ``ctg_signal.fs_hz``, as one ``dataframe_records`` row."""
    import json

    lines = [c for c in documented_commands() if c[:2] == ["fetal", "payload-ctg"]]
    assert lines, "the README no longer documents fetal payload-ctg"
    argv = list(lines[0])
    record = Path(argv[2])
    if not (ROOT / record.parent).is_dir():
        mirror = Path(os.environ.get("FETAL_MIRROR", ROOT.parent / "shared" / "data"))
        if not (mirror / "ctu-uhb" / f"{record.name}.hea").is_file():
            pytest.skip(f"neither {record.parent} nor a mirror of ctu-uhb here")
        argv[2] = str(mirror / "ctu-uhb" / record.name)
    out = tmp_path / "payload.json"
    argv[argv.index("--out") + 1] = str(out)
    proc = subprocess.run([sys.executable, "-m", "stages.cli", *argv[1:]], cwd=ROOT,
                          env=repo_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["dataframe_records"]
    fs_hz, minutes = params()["ctg_signal"]["fs_hz"], params()["train_ctg"]["window_minutes"]
    assert len(rows) == 1 and rows[0]["fs_hz"] == fs_hz
    assert len(rows[0]["fhr_bpm"]) == len(rows[0]["uc"]) == minutes * 60 * fs_hz
    assert 50 < sum(x for x in rows[0]["fhr_bpm"] if x) / sum(1 for x in rows[0]["fhr_bpm"] if x)
