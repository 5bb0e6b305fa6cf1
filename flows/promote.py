"""``fetal promote``: push the pipeline's outputs, then move each registered model's champion.

The register stages (``register_ctg``, ``register_us``) add versions during ``dvc repro`` and
alias them ``challenger``; nothing there moves ``champion``. This command, run after the
pipeline (``make pipeline``: ``dvc repro``, ``dvc push``, ``fetal promote``; the training flow
the same), does, in this order:

1. ``dvc push`` of the pipeline's outputs to the default remote (a no-op check when already
   pushed): a champion's training data and model must exist beyond this machine. When the push
   fails, no champion moves, and the comparison says so for every model.
2. For each model of the register reports (``data/reports/register_ctg.json``, then
   ``register_us.json``; within a report in its order, the CTG baseline first), the paired
   decision against the champion of the moment, under the registry lock
   (:func:`stages.common.registry.champion.promote_version`).
3. The registry comparison (champion before and after each decision, the paired difference with
   its interval, why) printed and written to ``data/reports/registry_comparison.md`` (its rows
   to ``registry_comparison.json``, which ``fetal summary`` reads).

Exit status: 0 done, 1 no register report, 3 the push failed (nothing moved), 4 a decision
failed (the other models were still decided).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from flows.outcomes import comparison_markdown, decision_row, kept_row
from stages.ctg.paths import REGISTER_CTG_REPORT
from stages.ultrasound.paths import REGISTER_US_REPORT

REPORTS = (REGISTER_CTG_REPORT, REGISTER_US_REPORT)
COMPARISON = "data/reports/registry_comparison.md"
COMPARISON_ROWS = "data/reports/registry_comparison.json"
EXIT_NO_REPORT, EXIT_PUSH_FAILED, EXIT_DECISION_FAILED = 1, 3, 4


def registered(root: Path) -> list[dict[str, Any]]:
    """The models of the register reports that exist, in decision order."""
    from stages.common.io import read_json

    return [row for rel in REPORTS if (root / rel).is_file()
            for row in read_json(root / rel)["models"]]  # fmt: skip


def dvc_command() -> list[str]:
    """The ``dvc`` of the running interpreter's venv (stages say ``python``: same venv)."""
    venv_dvc = Path(sys.executable).parent / "dvc"
    return [str(venv_dvc) if venv_dvc.exists() else "dvc"]


def push_outputs(root: Path) -> tuple[bool, str]:
    """``dvc push`` in ``root``: (pushed, the last line of its output or of its error)."""
    proc = subprocess.run(
        [*dvc_command(), "--wait-for-lock", "push"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines() or ["nothing to push"]
    return proc.returncode == 0, lines[-1].strip()


def current_champion(name: str) -> tuple[str | None, int]:
    """``name``'s champion version and the sequence number of its last history entry."""
    from stages.common.registry import champion, tracking

    try:
        history = champion.champion_history(name)
    except Exception:  # not registered in this store
        history = []
    return tracking.alias_version(name, tracking.CHAMPION), max([e["seq"] for e in history] + [0])


def decide_all(models: list[dict[str, Any]], by: str) -> tuple[list[dict[str, Any]], bool]:
    """Each model's decision, in order (one failing does not stop the others); the report rows
    and whether every decision was taken."""
    from stages.common.registry import champion

    rows, ok = [], True
    for m in models:
        before, seq = current_champion(m["name"])
        try:
            decision = champion.promote_version(m["name"], m["version"], m["margin"], by)
        except Exception as exc:  # a tampered item file, an unreachable store: say it, go on
            ok = False
            rows.append(kept_row(m["name"], m["version"], before,
                                 f"no decision: {type(exc).__name__}: {exc}"))  # fmt: skip
            continue
        moves = [e for e in champion.champion_history(m["name"]) if e["seq"] > seq]
        rows.append(decision_row(m["name"], m["version"], before, decision.to_dict(), moves))
    return rows, ok


def not_decided(models: list[dict[str, Any]], why: str) -> list[dict[str, Any]]:
    """Rows saying no champion moved, and why (a failed push or stage)."""
    return [kept_row(m["name"], m["version"], current_champion(m["name"])[0], why)
            for m in models]  # fmt: skip


def write_comparison(root: Path, rows: list[dict[str, Any]], title: str) -> str:
    """The comparison as markdown, written to :data:`COMPARISON` (git-ignored), and its rows to
    :data:`COMPARISON_ROWS` (what ``fetal summary`` reads); returns the markdown."""
    from stages.common.io import write_json, write_text

    body = f"# {title}\n\n{comparison_markdown(rows)}\n"
    write_text(root / COMPARISON, body)
    write_json(root / COMPARISON_ROWS, {"title": title, "rows": rows})
    return body


def add_repo_argument(parser: argparse.ArgumentParser) -> None:
    """``--repo``, the project folder of the commands that read its reports and registry."""
    parser.add_argument(
        "--repo", default=None, help="project root (default: the folder holding params.yaml)"
    )


def repo_root(repo: str | None) -> Path:
    """The project folder ``--repo`` names, else the one holding params.yaml."""
    from stages.common.params import project_root

    return Path(repo).resolve() if repo else project_root()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal promote`` (see :mod:`stages.cli`)."""
    add_repo_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Push, then decide every registered model; print and write the comparison."""
    root = repo_root(args.repo)
    models = registered(root)
    if not models:
        names = ", ".join(map(str, REPORTS))
        print(
            f"fetal promote: no register report ({names}): run `dvc repro` first", file=sys.stderr
        )
        return EXIT_NO_REPORT
    pushed, detail = push_outputs(root)
    if not pushed:
        why = f"dvc push failed ({detail}): no champion moves before the inputs are on the remote"
        print(write_comparison(root, not_decided(models, why), "Registry: nothing promoted"))
        return EXIT_PUSH_FAILED
    rows, ok = decide_all(models, "fetal promote")
    print(write_comparison(root, rows, "Registry: champion decisions"))
    return 0 if ok else EXIT_DECISION_FAILED


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("promote", argv)


if __name__ == "__main__":
    raise SystemExit(main())
