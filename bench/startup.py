"""Start-up of ``fetal score-ctg``: ``python -m bench.startup [--records 100] [--repeats 2]``.

Each row is the wall time and the CPU time (user + system, from ``getrusage``: steadier than
wall time on a shared machine) of a fresh ``python -m stages.cli score-ctg`` process, from
launch to exit, so interpreter start, imports and the model load are all in it:

- ``--help``: the interpreter and the command's parser (no TensorFlow, no MLflow);
- ``1 record``: time to the first scored record (start-up + one record);
- ``N records``: the whole run; ``per record`` = (N records - 1 record) / (N - 1).

Records: N copied from ``FETAL_MIRROR``/ctu-uhb (default ``/work/shared/data``) into a scratch
folder outside the repository, else synthetic ones from :mod:`tests.synth_ctg`. Model:
``data/models/ctg`` when it exists, else a small seeded network built here (start-up, not skill).
The table is printed; nothing is written into the project. ``--project DIR`` times the code of
another checkout (e.g. ``git archive <commit> | tar -x -C DIR``) with the same records and model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.scratch import children_cpu_s

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = Path("/work/shared/data")


def make_records(folder: Path, n: int, mirror: Path) -> str:
    """Fill ``folder`` with ``n`` records; return where they came from."""
    folder.mkdir(parents=True, exist_ok=True)
    src = mirror / "ctu-uhb"
    names = sorted(p.stem for p in src.glob("*.hea"))[:n] if src.is_dir() else []
    if len(names) == n:
        for name in names:
            for ext in (".hea", ".dat"):
                shutil.copyfile(src / f"{name}{ext}", folder / f"{name}{ext}")
        return f"{n} CTU-UHB records ({src})"
    from tests.synth_ctg import synth_record, write_ctg_record

    rng = np.random.default_rng(0)
    for i in range(n):
        fhr, uc, _ = synth_record(rng, acidemic=bool(i % 2), duration_min=60.0)
        write_ctg_record(folder, f"{3000 + i}", fhr, uc, ph=None)
    return f"{n} synthetic 60-min records"


def make_model(folder: Path) -> str:
    """The project's CTG model folder, or a small seeded one built into ``folder``."""
    local = ROOT / "data" / "models" / "ctg"
    if local.is_dir():
        return str(local)
    from tests.synth_ctg import untrained_model_dir

    untrained_model_dir(folder, last_minutes=60, units=8, dense_units=8, conv_filters=8)
    return str(folder)


def time_cli(argv: list[str], repeats: int, project: Path) -> tuple[float, float, int]:
    """Best wall and CPU time (s) of ``python -m stages.cli *argv`` run in ``project`` over
    ``repeats``, and the exit code."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    best_wall, best_cpu, code = float("inf"), float("inf"), 0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), children_cpu_s()
        proc = subprocess.run(
            [sys.executable, "-m", "stages.cli", *argv],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, children_cpu_s() - c0)
        code = proc.returncode
    return best_wall, best_cpu, code


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="runs per row; the best is shown")
    ap.add_argument("--project", type=Path, default=ROOT, help="checkout whose CLI is timed")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # this process builds the model
    mirror = Path(os.environ.get("FETAL_MIRROR") or DEFAULT_MIRROR)
    with tempfile.TemporaryDirectory(prefix="bench_startup_") as tmp:
        tmp_path = Path(tmp)
        source = make_records(tmp_path / "many", args.records, mirror)
        (tmp_path / "one").mkdir()
        first = sorted((tmp_path / "many").glob("*.hea"))[0].stem
        for ext in (".hea", ".dat"):
            shutil.copyfile(tmp_path / "many" / f"{first}{ext}", tmp_path / "one" / f"{first}{ext}")
        model = make_model(tmp_path / "model")
        out = str(tmp_path / "preds.csv")
        common = ["--out", out, "--model", model]
        runs = {
            "score-ctg --help": ["score-ctg", "--help"],
            "1 record": ["score-ctg", str(tmp_path / "one"), *common],
            f"{args.records} records": ["score-ctg", str(tmp_path / "many"), *common],
        }
        rows = [(name, *time_cli(cmd, args.repeats, args.project)) for name, cmd in runs.items()]
    n = max(args.records - 1, 1)
    print(f"code: {args.project}; records: {source}; model: {model}")
    print(f"best of {args.repeats}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| run | wall s | CPU s | exit |\n|---|---:|---:|---:|")
    for name, wall, cpu, code in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {code} |")
    per_wall, per_cpu = (rows[2][1] - rows[1][1]) / n, (rows[2][2] - rows[1][2]) / n
    print(f"| per record (difference) | {per_wall:.3f} | {per_cpu:.3f} | |")


if __name__ == "__main__":
    main()
