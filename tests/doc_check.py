"""Docs that cannot drift: the checks ``tests/unit/test_docs.py`` runs on README.md and docs/*.md.

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
names exactly the dvc.yaml stages, the README stays under 200 lines, and the cheap documented
commands really run and their output is read (``dvc dag``, ``fetal --help``, ``fetal
payload-ctg`` on a real record, ``python -m tests.doc_figures``). A line with
``# docs-test: skip`` is not checked (servers and the like).

Figures: every number in a ``<!-- figures:NAME -->`` block equals what ``tests/doc_figures.py``
renders from ``data/reports/``; every other table holding a measured figure (a number with a
decimal point or a percentage) says where it comes from on a line above it,
``<!-- table: bench `python -m bench.X ...`, YYYY-MM-DD -->`` (``experiment`` for
``experiments/``; ``run`` for a timed ``make``/``dvc`` command), the command checked like any
documented one, or ``<!-- table: reference -->`` for a table of settings, formats or
definitions that measures nothing.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from tests import import_graph as ig

ROOT = Path(__file__).resolve().parents[1]
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
RUN_FOR_REAL = {("dvc", "dag"), ("fetal", "--help"), ("python", "-m", "tests.doc_figures")}
TABLE_MARK = re.compile(r"<!-- table: (?P<kind>bench|experiment|run|reference)(?P<rest>.*?)-->")
SOURCE_MODULES = {"bench": "bench.", "experiment": "experiments."}
RUN_TOOLS = {"make", "dvc"}  # a ``run`` table: a timed or repeated run of a documented command
MEASURED = re.compile(r"\d\.\d|\d ?%")
MARK_REACH = 4  # lines above a table's header where its source line may be
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


def tables(markdown: str) -> list[tuple[int, list[str]]]:
    """(header line number, lines) of every table outside code blocks and figures blocks."""
    lines = markdown.splitlines()
    out, fenced, block, i = [], False, False, 0
    while i < len(lines):
        line = lines[i]
        fenced ^= bool(re.match(r"^\s*```", line))
        block = (block or line.startswith("<!-- figures:")) and line != "<!-- /figures -->"
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        row, nxt = line.lstrip(), nxt.strip()  # a table may sit indented in a list
        if not fenced and not block and row.startswith("|") and re.match(r"^\|[\s:|-]+\|$", nxt):
            end = i + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            out.append((i + 1, lines[i:end]))
            i = end
            continue
        i += 1
    return out


def check_tables(markdown: str, name: str) -> list[str]:
    """A table holding a measured figure says, just above it, which bench made it and when."""
    problems, lines = [], markdown.splitlines()
    for number, rows in tables(markdown):
        above = "\n".join(lines[max(0, number - 1 - MARK_REACH) : number - 1])
        mark = list(TABLE_MARK.finditer(above))
        if not mark:
            if any(MEASURED.search(row) for row in rows[2:]):
                problems.append(f"{name}:{number}: a table of figures without its source line "
                                "(<!-- table: bench `COMMAND`, DATE -->)")  # fmt: skip
            continue
        kind, rest = mark[-1]["kind"], mark[-1]["rest"]
        if kind == "reference":
            continue
        command = re.search(r"`([^`]+)`", rest)
        if not command or not re.search(r"\b20\d\d-\d\d-\d\d\b", rest):
            problems.append(f"{name}:{number}: {kind} table: name its `command` and its date")
            continue
        argv = normalise(split_commands(command.group(1))[0])
        if kind == "run" and argv[0] not in RUN_TOOLS:
            problems.append(f"{name}:{number}: run table: a `make` or `dvc` command expected")
            continue
        if kind != "run" and (
            argv[:2] != ["python", "-m"] or not argv[2].startswith(SOURCE_MODULES[kind])
        ):
            want = f"`python -m {SOURCE_MODULES[kind]}...`"
            problems.append(f"{name}:{number}: {kind} table: {want}, not {command.group(1)!r}")
            continue
        problems += [f"{name}:{number}: {p}" for p in check_command(argv)]
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
    return problems + check_tables(markdown, name)


def documented_commands() -> list[list[str]]:
    out = []
    for doc in DOC_FILES:
        for _, line in shell_lines(doc.read_text()):
            if SKIP_MARK not in line:
                out += [normalise(argv) for argv in split_commands(line)]
    return out
