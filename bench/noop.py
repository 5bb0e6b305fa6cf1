"""The cost of the source check: ``python -m bench.noop`` (FETAL_MIRROR = folder of the mirrors).

Rows: wall and CPU seconds of a ``dvc repro`` with nothing new at the sources, on a scratch copy
of the project (bench.scratch) holding only the source and ingest stages' outputs: DVC runs the
two ``always_changed`` source stages (each reads its source's listing: CTU-UHB's RECORDS and
SHA256SUMS.txt, FETAL_PLANES_DB's manifest, HC18 hashed) and skips the ingest stages. The whole
pipeline's no-op adds DVC's check of the other stages (``bench.ctg``'s "dvc repro (nothing to
do)" row, measured on the project after ``make pipeline``). Median of ``--repeats`` runs; CPU is
user + system of the ``dvc`` process and its children (the machine's other load shows in wall
time, not in CPU time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench.scratch import make_scratch_project, scratch_env, timed_dvc

SOURCES = "sources/dvc.yaml"  # the source checks' stage file
TARGETS = [f"{SOURCES}:source_ctg", "ingest_ctg", f"{SOURCES}:source_us", "ingest_us"]


def timed_repro(repo: Path, mirror_root: Path, *targets: str) -> tuple[float, float, str]:
    """Wall s, CPU s and stdout of one ``dvc repro TARGETS`` in ``repo``."""
    return timed_dvc(repo, scratch_env(repo, mirror_root), "repro", *targets)


def bench_source_check(mirror_root: Path, repeats: int = 5) -> list[tuple[str, float, float]]:
    """(step, median wall s, median CPU s) of a no-op repro of the data-arrival stages."""
    with tempfile.TemporaryDirectory(prefix="bench_noop_") as tmp:
        repo = Path(tmp)
        make_scratch_project(repo)
        timed_repro(repo, mirror_root, *TARGETS)  # ingest once (a few seconds)
        runs = [timed_repro(repo, mirror_root, *TARGETS) for _ in range(repeats)]
        if any("Running stage 'ingest" in out for _, _, out in runs):
            raise RuntimeError("an ingest stage ran again: the source check is not a no-op")
        alone = [timed_repro(repo, mirror_root, "-s", TARGETS[0]) for _ in range(repeats)]
    return [
        (
            "dvc repro source_* ingest_* (nothing new)",
            statistics.median(r[0] for r in runs),
            statistics.median(r[1] for r in runs),
        ),
        (
            "dvc repro -s source_ctg",
            statistics.median(r[0] for r in alone),
            statistics.median(r[1] for r in alone),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="runs per row (median)")
    args = parser.parse_args(argv)
    mirror = Path(os.environ.get("FETAL_MIRROR", "../shared/data")).resolve()
    print("| step | wall s | CPU s | load (1 min) |\n|---|---:|---:|---:|")
    for step, wall, cpu in bench_source_check(mirror, args.repeats):
        print(f"| {step} | {wall:.2f} | {cpu:.2f} | {os.getloadavg()[0]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
