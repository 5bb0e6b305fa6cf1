"""Each stage's wall time in one ``dvc repro``: ``python -m bench.stages [--project P] [ARGS]``.

Runs ``dvc repro ARGS`` in the project (its own ``.venv``, ``FETAL_MIRROR`` as exported) and
times each stage from DVC's own lines ("Running stage 'X'" starts it; the next stage's line, or
the end, stops it; "Stage 'X' didn't change, skipping" is a skip). Prints one row per stage and
the total. DVC's output goes to ``--log`` (default: none kept). Examples:

    python -m bench.stages --project ../fresh-clone              # a whole `make pipeline`
    python -m bench.stages -- -s train_segmenter_us -f           # one stage, forced
    python -m bench.stages -- train_families_ctg evaluate_ctg    # the CTG branch

Times include what else the machine runs: compare rows of one run, or runs on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)'")
SKIPPED = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping")


def stage_times(lines: list[tuple[float, str]], end_s: float) -> list[tuple[str, str, float]]:
    """(stage, "ran"/"skipped", wall s) from DVC's timestamped output lines, in run order."""
    rows: list[tuple[str, str, float]] = []
    current: tuple[str, float] | None = None
    for at, line in lines:
        ran, skipped = RUNNING.match(line), SKIPPED.match(line)
        if not (ran or skipped):
            continue
        if current is not None:
            rows.append((current[0], "ran", at - current[1]))
            current = None
        if ran:
            current = (ran["stage"], at)
        else:
            rows.append((skipped["stage"], "skipped", 0.0))
    if current is not None:
        rows.append((current[0], "ran", end_s - current[1]))
    return rows


def timed_repro(project: Path, args: list[str], log: Path | None) -> tuple[list, float, int]:
    """Run ``dvc repro ARGS`` in ``project``; its timestamped lines, wall s, exit code."""
    venv_bin = project / ".venv" / "bin"
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(venv_bin / "dvc"), "repro", *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    sink = log.open("w") if log else None
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
        if sink:
            sink.write(line)
        if RUNNING.match(line):  # progress: one line per stage
            print(f"{lines[-1][0]:8.1f} s  {line.strip()}", file=sys.stderr, flush=True)
    code = proc.wait()
    if sink:
        sink.close()
    return lines, time.perf_counter() - t0, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="project root (its .venv)")
    parser.add_argument("--log", type=Path, help="keep dvc's whole output here")
    parser.add_argument("repro_args", nargs="*", help="arguments of dvc repro (after --)")
    args = parser.parse_args()
    lines, total_s, code = timed_repro(args.project.resolve(), args.repro_args, args.log)
    print("| stage | status | wall s |")
    print("|---|---|---:|")
    for stage, status, wall_s in stage_times(lines, total_s):
        print(f"| {stage} | {status} | {wall_s:.1f} |")
    print(f"| **dvc repro {' '.join(args.repro_args)}** | exit {code} | {total_s:.1f} |")
    sys.exit(code)


if __name__ == "__main__":
    main()
