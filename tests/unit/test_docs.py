"""Docs that cannot drift: README.md and docs/*.md are checked against the code.

Every line of a fenced ``bash``/``sh`` block is parsed as shell (continuations joined, comments
dropped, ``&&``, ``;``, ``|`` and ``&`` split) and each command is checked:

- ``fetal SUB ...`` (also ``.venv/bin/fetal``, ``python -m stages.cli SUB``): ``SUB`` exists and
  every ``--flag`` appears in ``python -m stages.cli SUB --help`` (or, where the CLI gives no
  per-command help, in the owning module's ``--help``);
- ``python -m MODULE ...`` for a module of this repository: ``MODULE --help`` runs and lists every
  ``--flag`` used;
- ``make TARGET``: a Makefile target; ``dvc repro STAGE``: a dvc.yaml stage; ``-S``/``--set``
  ``SECTION.KEY=VALUE``: a params.yaml key;
- every repository path in a command (``stages/``, ``flows/``, ``bench/``, ``experiments/``,
  ``docs/``, ``tests/``; ``data/`` holds outputs and is skipped) exists.

Besides: every relative markdown link (and its ``#anchor``) resolves, the architecture diagram
names exactly the dvc.yaml stages, the README stays under 200 lines, and the cheap read-only
commands (``dvc dag``, ``fetal --help``) really run. A line with ``# docs-test: skip`` is not
checked (servers and the like).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests import import_graph as ig

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "# docs-test: skip"
README_MAX_LINES = 200
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# Where a sub-command of `fetal` lives (stages/cli.py dispatches to each one's argparse main).
CLI_OWNERS = {
    "score-ctg": "stages.ctg.serving.score",
    "score-us": "stages.ultrasound.serving.score",
    "compare-models": "flows.registry",
    "replay-ctg": "flows.replay",
    "add-data": "stages.common.intake.add_data",
}
PATH_RE = re.compile(r"^(?:\./)?((?:stages|flows|bench|experiments|docs|tests)/[\w./-]*)")
# Read-only and quick: these documented commands are run for real.
RUN_FOR_REAL = {("dvc", "dag"), ("fetal", "--help")}
HELP_TIMEOUT_S = 180


# ------------------------------------------------------------------------ parsing markdown
def shell_lines(markdown: str) -> list[tuple[int, str]]:
    """(line number, command line) of the fenced bash/sh blocks, continuations joined."""
    out: list[tuple[int, str]] = []
    lang: str | None = None
    pending, start = "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence:
            lang = None if lang is not None else fence.group(1).lower()
            pending = ""
            continue
        if lang not in SHELL_LANGS:
            continue
        if not pending:
            start = number
        stripped = line.rstrip()
        if stripped.endswith("\\") and not stripped.endswith("\\\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        if full and not full.startswith("#"):
            out.append((start, full))
    return out


def split_commands(line: str) -> list[list[str]]:
    """Shell words of each simple command on ``line`` (comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    try:
        for token in lexer:
            if token and set(token) <= set(";&|"):
                commands.append([])
            else:
                commands[-1].append(token)
    except ValueError as exc:  # unbalanced quotes
        raise ValueError(f"cannot parse {line!r}: {exc}") from exc
    return [c for c in commands if c]


def normalise(argv: list[str]) -> list[str]:
    """Drop leading ``NAME=value`` settings and a ``.venv/bin/`` prefix; map ``python -m
    stages.cli`` to ``fetal``."""
    i = 0
    while i < len(argv) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[i]):
        i += 1
    argv = list(argv[i:])
    if not argv:
        return argv
    argv[0] = re.sub(r"^(?:\$PWD/|\./)?\.venv/bin/", "", argv[0])
    if argv[0] in {"python", "python3"} and argv[1:3] == ["-m", "stages.cli"]:
        argv = ["fetal", *argv[3:]]
    return argv


def markdown_links(markdown: str) -> list[str]:
    """Targets of ``[text](target)`` and ``![alt](target)`` outside code blocks and spans."""
    text = re.sub(r"(?ms)^\s*```.*?^\s*```", "", markdown)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\[[^\]\n]*\]\(([^)\s]+)\)", text)


def heading_anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the headings of a markdown text."""
    text = re.sub(r"(?ms)^\s*```.*?^\s*```", "", markdown)
    anchors = set()
    for title in re.findall(r"(?m)^#{1,6}\s+(.+?)\s*#*\s*$", text):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


# ------------------------------------------------------------------------ the repository
def help_text(args: tuple[str, ...]) -> tuple[int, str]:
    """Return code and output of ``python -m ARGS --help`` in the repository (cached)."""
    return _help_text(args)


def repo_env() -> dict[str, str]:
    """The environment of a fresh clone's venv: its tools on the PATH, the repo importable."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }


@functools.cache
def _help_text(args: tuple[str, ...]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", *args, "--help"],
        cwd=ROOT,
        env=repo_env(),
        capture_output=True,
        text=True,
        timeout=HELP_TIMEOUT_S,
    )
    return proc.returncode, proc.stdout + proc.stderr


@functools.cache
def make_targets() -> frozenset[str]:
    text = (ROOT / "Makefile").read_text()
    return frozenset(re.findall(r"(?m)^([A-Za-z0-9_.-]+)\s*:(?!=)", text))


@functools.cache
def dvc_stages() -> frozenset[str]:
    return frozenset(ig.pipeline_stages(ROOT))


@functools.cache
def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@functools.cache
def generated_dirs() -> tuple[str, ...]:
    """Anchored git-ignored folders (``/docs/screenshots/``): written by tests, linked by docs."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return tuple(x.strip("/") + "/" for x in lines if x.startswith("/") and x.endswith("/"))


def module_exists(module: str) -> bool:
    base = ROOT.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()


def is_repo_module(module: str) -> bool:
    return module.split(".")[0] in {"stages", "flows", "bench", "experiments", "tests"}


def used_flags(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if re.match(r"^--[A-Za-z]", a)]


def missing_flags(flags: list[str], text: str) -> list[str]:
    return [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]


def param_exists(dotted: str) -> bool:
    node: object = params()
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# ------------------------------------------------------------------------ the checks
def check_fetal(argv: list[str]) -> list[str]:
    rest = argv[1:]
    if not rest or rest[0].startswith("-"):
        code, text = help_text(("stages.cli",))
        bad = missing_flags([f for f in used_flags(rest) if f != "--help"], text)
        return [f"`fetal --help` failed ({code})"] * bool(code) + [
            f"fetal: flag {f} not in `fetal --help`" for f in bad
        ]
    sub, flags = rest[0], used_flags(rest[1:])
    code, text = help_text(("stages.cli", sub))
    if code != 0 and sub in CLI_OWNERS:  # no per-command help: the owning module's
        code, text = help_text((CLI_OWNERS[sub],))
    if code != 0:
        return [f"fetal {sub}: no such sub-command (`python -m stages.cli {sub} --help`: {code})"]
    return [f"fetal {sub}: flag {f} not in its --help" for f in missing_flags(flags, text)]


def check_python_module(argv: list[str]) -> list[str]:
    if len(argv) < 3 or argv[1] != "-m":
        return []
    module = argv[2]
    if not is_repo_module(module):
        return []
    if not module_exists(module):
        return [f"python -m {module}: no such module"]
    code, text = help_text((module,))
    if code != 0:
        return [f"python -m {module} --help failed ({code}): {text[-300:]}"]
    return [f"{module}: flag {f} not in its --help" for f in missing_flags(used_flags(argv), text)]


def check_make(argv: list[str]) -> list[str]:
    targets = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
    return [f"make {t}: no such Makefile target" for t in targets if t not in make_targets()]


def is_dvc_target(target: str) -> bool:
    """A stage name, a stage file (``sources/dvc.yaml``) or ``FILE:stage``, as DVC takes them."""
    file, _, stage = target.rpartition(":")
    if not file:
        return target in dvc_stages() or target in ig.PIPELINE_FILES
    return file in ig.PIPELINE_FILES and stage in dvc_stages()


def check_dvc(argv: list[str]) -> list[str]:
    problems = []
    if argv[1:2] == ["repro"]:
        stages = [a for a in argv[2:] if not a.startswith("-")]
        problems += [f"dvc repro {s}: no such stage" for s in stages if not is_dvc_target(s)]
    return problems


def check_param_overrides(argv: list[str]) -> list[str]:
    """``dvc exp run -S SECTION.KEY=VALUE`` and the bench scripts' ``--set SECTION.KEY=VALUE``."""
    problems = []
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in {"-S", "--set-param", "--set"} and "=" in value:
            key = value.split("=", 1)[0]
            if not param_exists(key):
                problems.append(f"{flag} {key}: no such params.yaml key")
    return problems


def check_paths(argv: list[str]) -> list[str]:
    problems = []
    for word in argv:
        match = PATH_RE.match(word)
        if match and not (ROOT / match.group(1).rstrip(".,:;")).exists():
            problems.append(f"path {match.group(1)} does not exist")
    return problems


def check_command(argv: list[str]) -> list[str]:
    argv = normalise(argv)
    if not argv:
        return []
    checks = {"fetal": check_fetal, "python": check_python_module, "python3": check_python_module}
    checks |= {"make": check_make, "dvc": check_dvc}
    problems = checks.get(argv[0], lambda _: [])(argv)
    return problems + check_param_overrides(argv) + check_paths(argv)


def check_links(markdown: str, source: Path) -> list[str]:
    problems = []
    for target in markdown_links(markdown):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # external, or an anchor on the same page
        path_part, _, anchor = target.partition("#")
        path = (source.parent / path_part).resolve()
        try:
            rel = path.relative_to(ROOT).as_posix()
        except ValueError:
            problems.append(f"link {target}: outside the repository")
            continue
        if any(rel.startswith(d) for d in generated_dirs()):
            continue  # written by the test suite (git-ignored), e.g. docs/screenshots/
        if not path.exists():
            problems.append(f"link {target}: {rel} does not exist")
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path.read_text()):
            problems.append(f"link {target}: no heading #{anchor} in {rel}")
    return problems


def check_markdown(markdown: str, source: Path) -> list[str]:
    """Every problem of one markdown text, as ``name:line: message``."""
    problems = []
    name = source.name
    for number, line in shell_lines(markdown):
        if SKIP_MARK in line:
            continue
        try:
            commands = split_commands(line)
        except ValueError as exc:
            problems.append(f"{name}:{number}: {exc}")
            continue
        for argv in commands:
            problems += [f"{name}:{number}: {p}" for p in check_command(argv)]
    problems += [f"{name}: {p}" for p in check_links(markdown, source)]
    return problems


def documented_commands() -> list[list[str]]:
    out = []
    for doc in DOC_FILES:
        for _, line in shell_lines(doc.read_text()):
            if SKIP_MARK not in line:
                out += [normalise(argv) for argv in split_commands(line)]
    return out


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
        assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr[-500:]}"
        if argv == ("dvc", "dag"):
            assert all(stage in proc.stdout for stage in dvc_stages())


# ------------------------------------------------------------------------ tests: the checker
BAD_DOC = """# Synthetic

```bash
fetal score-ctg recs/ --out preds.csv --no-such-flag   # a flag the command lacks
python -m bench.ctg --skip-stages --project stages/no_such_dir
fetal no-such-command --out x.csv
make pipeline && make no-such-target
dvc exp run -S train_ctg.no_such_key=1
dvc repro no_such_stage
python -m stages.no_such_module
make serve-forever   # docs-test: skip
```

A [good link](results.md), a [bad one](no-such-page.md) and a [bad anchor](results.md#nowhere).
"""

GOOD_DOC = """```sh
FETAL_MIRROR=../shared/data .venv/bin/fetal score-us imgs --out p.csv \\
    --pixel-size-csv sizes.csv   # a continued line
python -m bench.ultrasound --set segment_us.method=classical --n 4 | tail -n 3
dvc repro evaluate_us && make test
cat data/reports/evaluate_us.json
```
"""


def test_checker_flags_each_kind_of_drift() -> None:
    problems = "\n".join(check_markdown(BAD_DOC, ROOT / "docs" / "synthetic.md"))
    expected = [
        "synthetic.md:4: fetal score-ctg: flag --no-such-flag not in its --help",
        "synthetic.md:5: path stages/no_such_dir does not exist",
        "synthetic.md:6: fetal no-such-command: no such sub-command",
        "synthetic.md:7: make no-such-target: no such Makefile target",
        "synthetic.md:8: -S train_ctg.no_such_key: no such params.yaml key",
        "synthetic.md:9: dvc repro no_such_stage: no such stage",
        "synthetic.md:10: python -m stages.no_such_module: no such module",
        "link no-such-page.md: docs/no-such-page.md does not exist",
        "link results.md#nowhere: no heading #nowhere in docs/results.md",
    ]
    for message in expected:
        assert message in problems
    assert "--out" not in problems and "--skip-stages" not in problems
    assert "make pipeline" not in problems and "serve-forever" not in problems
    assert "good link" not in problems and "link results.md:" not in problems
    assert len(problems.splitlines()) == len(expected)


def test_checker_accepts_a_correct_block() -> None:
    assert check_markdown(GOOD_DOC, ROOT / "docs" / "synthetic.md") == []


def test_shell_lines_join_continuations_and_drop_comments() -> None:
    lines = shell_lines(GOOD_DOC)
    assert lines[0][0] == 2 and "--pixel-size-csv sizes.csv" in lines[0][1]
    assert [n for n, _ in lines] == [2, 4, 5, 6]
    assert split_commands(lines[1][1])[1] == ["tail", "-n", "3"]
    assert normalise(split_commands(lines[0][1])[0])[:2] == ["fetal", "score-us"]
    assert shell_lines("```python\nfetal score-ctg --bad\n```\n") == []


def test_quoted_figures_equal_the_committed_metrics() -> None:
    """README and docs/results.md quote the committed reports (``python -m tests.doc_figures``);
    a block whose report this commit lacks says so instead of quoting anything."""
    from tests import doc_figures

    committed = subprocess.run(
        ["git", "ls-files", "data/reports/*.json"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if "data/reports/evaluate_ctg.json" not in committed:
        pytest.skip("not a git checkout with committed metrics")
    texts = [doc.read_text() for doc in doc_figures.DOCS]
    names = {m["name"] for text in texts for m in doc_figures.BLOCK.finditer(text)}
    assert {"ctg", "families", "us", "headline", "headline_us"} <= names
    assert doc_figures.stale_blocks() == []


def test_figures_check_flags_a_changed_metric(tmp_path: Path) -> None:
    from tests import doc_figures

    def family(auc: float) -> dict:
        return {"auc": auc, "auc_ci_low": auc - 0.1, "auc_ci_high": auc + 0.1}

    reports = {"evaluate_ctg": {"families": {"lstm": family(0.7), "logistic": family(0.72)}}}
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- figures:headline -->\nold\n<!-- /figures -->\n")
    assert doc_figures.stale_blocks([doc], reports) == ["doc.md: headline"]
    doc_figures.stale_blocks([doc], reports, write=True)
    assert "lstm 0.700 [0.600, 0.800], logistic 0.720 [0.620, 0.820]" in doc.read_text()
    assert doc_figures.stale_blocks([doc], reports) == []
    reports["evaluate_ctg"]["families"]["lstm"]["auc"] = 0.71  # a metric moves
    assert doc_figures.stale_blocks([doc], reports) == ["doc.md: headline"]
    # a block whose report is not committed says so, and is not stale for that
    doc.write_text("<!-- figures:us -->\n<!-- /figures -->\n")
    doc_figures.stale_blocks([doc], reports, write=True)
    assert "Not at this commit: `data/reports/train_segmenter_us.json`" in doc.read_text()
