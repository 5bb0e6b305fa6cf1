"""Each stage's wall time in a real ``dvc repro``: ``python -m bench.pipeline_times``.

Runs ``dvc repro`` (any further arguments after ``--`` are passed on: targets, ``-s``,
``--force``) in ``--project`` (default: this project), shows DVC's and the stages' output as it
comes (the long stages log their folds and epochs), and prints one row per stage that ran: the
time from DVC's ``Running stage`` line to its ``Updating lock file`` line, so a stage's row holds
its command plus DVC's hashing of its outputs. Stages DVC skipped are counted.
On a fresh clone this is ``make pipeline`` with a time per stage; it writes the project's
outputs as ``make pipeline`` would.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bench.scratch import BIN, ROOT

RUNNING = re.compile(r"^Running stage '([^']+)'")
SKIPPED = re.compile(r"^Stage '([^']+)' (?:didn't change|is cached)")
LOCKED = re.compile(r"^Updating lock file")  # DVC's last line of a stage it ran


def stage_times(
    lines: Iterable[str], clock: Callable[[], float] = time.perf_counter
) -> tuple[list[tuple[str, float]], list[str]]:
    """(stage, wall s) of each stage DVC ran, in order, and the stages it skipped.

    A stage's time runs from its ``Running stage`` line to DVC's ``Updating lock file`` line
    after it (its command, then DVC hashing its outputs), or, for a stage that failed, to the
    next stage or the end. ``lines`` is DVC's output as it arrives; ``clock`` is read at each
    of those lines.
    """
    ran: list[tuple[str, float]] = []
    skipped: list[str] = []
    current, start = None, 0.0
    for line in lines:
        if m := RUNNING.match(line):
            now = clock()
            if current is not None:
                ran.append((current, now - start))
            current, start = m.group(1), now
        elif LOCKED.match(line) and current is not None:
            ran.append((current, clock() - start))
            current = None
        elif m := SKIPPED.match(line):
            skipped.append(m.group(1))
    if current is not None:
        ran.append((current, clock() - start))
    return ran, skipped


def table(ran: list[tuple[str, float]], skipped: list[str]) -> str:
    """The markdown table of :func:`stage_times`' result, with the total and each share."""
    total = sum(s for _, s in ran)
    rows = ["| stage | wall s | min | share |", "|---|---:|---:|---:|"]
    rows += [f"| {n} | {s:.1f} | {s / 60:.1f} | {s / total:.0%} |" for n, s in ran if total]
    rows.append(f"| **all {len(ran)} stages that ran** | {total:.1f} | {total / 60:.1f} | |")
    if skipped:
        rows.append(f"\nskipped (up to date or restored from the run cache): {len(skipped)}")
    return "\n".join(rows)


def _echo(stream: Iterable[str]) -> Iterable[str]:
    for line in stream:
        sys.stderr.write(line)
        yield line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_times", description=__doc__)
    parser.add_argument("--project", type=Path, default=ROOT, help="project root (dvc.yaml)")
    parser.add_argument("dvc_args", nargs="*", help="passed to dvc repro (after --)")
    args = parser.parse_args(argv)
    with subprocess.Popen(
        [str(BIN / "dvc"), "repro", *args.dvc_args],
        cwd=args.project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env={
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        },
    ) as proc:
        assert proc.stdout is not None
        ran, skipped = stage_times(_echo(proc.stdout))
    print(table(ran, skipped))
    if proc.returncode:
        print(f"dvc repro failed (exit {proc.returncode}): the last row is the failed stage")
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
