"""CTG performance table: ``python -m bench.ctg`` (FETAL_MIRROR = folder holding ctu-uhb/).

Rows: wall time and peak memory of ingest, validate and preprocess on the real records (each
stage in its own subprocess on a scratch copy of the project, peak RSS from getrusage); training
time per epoch and per fold (from data/reports/train_ctg.json); scoring latency of one
90-minute record through the CTG predictor (data/models/ctg); the time of a ``dvc repro`` with
nothing to do; the wall time of the whole CTG branch with the default params on a scratch copy
(``--skip-branch`` skips it). Rows that cannot be measured say why.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "validate", "preprocess"]

# Runs one stage module as __main__ and reports its own wall time and peak RSS (Linux: KiB).
_CHILD = """
import json, resource, runpy, sys, time
t0 = time.perf_counter()
runpy.run_module(sys.argv[1], run_name="__main__")
print("BENCH " + json.dumps({"wall_s": time.perf_counter() - t0,
      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _row(step: str, wall_s: float | None, peak_mb: float | None, note: str) -> dict[str, Any]:
    return {"step": step, "wall_s": wall_s, "peak_mb": peak_mb, "note": note}


def bench_stages(mirror_root: Path) -> list[dict[str, Any]]:
    """Run ingest, validate, preprocess on a scratch project; one row per stage."""
    if not (mirror_root / "ctu-uhb" / "RECORDS").is_file():
        return [_row(f"{s}_ctg", None, None, f"no mirror at {mirror_root}/ctu-uhb") for s in STAGES]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_ctg_") as tmp:
        shutil.copy2(ROOT / "params.yaml", Path(tmp) / "params.yaml")
        env = {
            **os.environ,
            "FETAL_MIRROR": str(mirror_root),
            "FETAL_PROJECT_ROOT": tmp,
            "PYTHONPATH": str(ROOT),
        }
        for stage in STAGES:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, f"stages.ctg.pipeline.{stage}"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
                rows.append(_row(f"{stage}_ctg", None, None, f"failed: {tail}"))
                continue
            m = json.loads(lines[-1][6:])
            note = "452 records" if stage != "preprocess" else _preprocess_note(Path(tmp))
            rows.append(_row(f"{stage}_ctg", m["wall_s"], m["peak_mb"], note))
    return rows


def _preprocess_note(project: Path) -> str:
    report, timings = (
        project / "data/reports/preprocess_ctg.json",
        project / "data/runs/preprocess_ctg.json",
    )
    if not (report.is_file() and timings.is_file()):
        return ""
    r = {**json.loads(report.read_text()), **json.loads(timings.read_text())}
    return (
        f"{r['n_records']} records; in-stage {r['seconds']:.2f} s wall, "
        f"{r['cpu_seconds']:.2f} s CPU (excl. imports)"
    )


def bench_training(project: Path) -> list[dict[str, Any]]:
    path = project / "data/runs/train_ctg.json"  # timings: the untracked run report
    if not path.is_file():
        return [_row("train_ctg epoch / fold", None, None, f"no {path.relative_to(project)} yet")]
    r = json.loads(path.read_text())
    rows = []
    for key, step in (
        ("mean_epoch_s", "train_ctg per epoch"),
        ("mean_fold_s", "train_ctg per fold"),
    ):
        value = r.get(key)
        rows.append(
            _row(
                step,
                float(value) if value is not None else None,
                None,
                "from data/runs/train_ctg.json" if value is not None else f"no key {key}",
            )
        )
    return rows


def _ninety_minute_record(mirror_root: Path) -> tuple[np.ndarray, np.ndarray]:
    from stages.ctg.signal.wfdb_record import read_ctg_record

    folder = mirror_root / "ctu-uhb"
    if (folder / "RECORDS").is_file():
        for name in (folder / "RECORDS").read_text().split():
            rec = read_ctg_record(folder / name)
            if rec.fhr_bpm.size >= 90 * 60 * 4:
                return rec.fhr_bpm[-21600:], rec.uc[-21600:]
    from tests.synth_ctg import synth_fhr, synth_uc

    rng = np.random.default_rng(0)
    return synth_fhr(21600, 4, rng=rng), synth_uc(21600, 4, np.arange(60, 5400, 180), rng)


def bench_scoring(project: Path, mirror_root: Path, repeats: int = 20) -> list[dict[str, Any]]:
    model_dir = project / "data/models/ctg"
    if not model_dir.is_dir():
        return [_row("score 1 x 90-min record", None, None, "no data/models/ctg yet")]
    try:
        import pandas as pd

        from stages.ctg.models.network import load_predictor
    except ImportError as exc:
        return [_row("score 1 x 90-min record", None, None, f"cannot import model: {exc}")]
    predictor = load_predictor({"model_dir": str(model_dir)})
    fhr, uc = _ninety_minute_record(mirror_root)
    frame = pd.DataFrame({"fhr_bpm": [fhr.tolist()], "uc": [uc.tolist()]})
    predictor.predict(frame)  # warm-up (graph tracing)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predictor.predict(frame)
        times.append(time.perf_counter() - t0)
    return [
        _row(
            "score 1 x 90-min record",
            float(np.median(times)),
            None,
            f"median of {repeats}, after warm-up; p95 {np.percentile(times, 95):.4f} s",
        )
    ]


def bench_noop_repro(project: Path) -> list[dict[str, Any]]:
    step = "dvc repro (nothing to do)"
    if not (project / "dvc.lock").is_file():
        return [_row(step, None, None, "no dvc.lock yet")]
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    status = subprocess.run(
        [dvc, "status", "--json"], cwd=project, capture_output=True, text=True, env=env
    )
    status_wall = time.perf_counter() - t0
    changed = json.loads(status.stdout or "{}") if status.returncode == 0 else None
    if changed is not None:  # the source stages always run: their check is part of the no-op
        changed = {s: c for s, c in changed.items() if c != ["always changed"]}
    if changed is None or changed:
        # A repro here would run real stages; this row only measures the no-op case.
        return [_row(step, None, None, f"pipeline not up to date ({len(changed or {})} stages)")]
    rows = []
    # the whole no-op, then for comparison (each with DVC's own start-up): the source checks alone,
    # and DVC checking every stage without running them
    for name, args in (
        (step, ["repro"]),
        ("dvc repro sources/dvc.yaml alone", ["repro", "sources/dvc.yaml"]),
    ):
        t0 = time.perf_counter()
        proc = subprocess.run([dvc, *args], cwd=project, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        ok = proc.returncode == 0
        rows.append(_row(name, wall if ok else None, None, "ok" if ok else "dvc repro failed"))
    rows.insert(
        1,
        _row("dvc status alone", status_wall, None, "every stage's deps and params checked"),
    )
    return rows


def bench_branch(mirror_root: Path) -> list[dict[str, Any]]:
    """Wall time of the whole CTG branch (``dvc repro evaluate_ctg``) with the default params.

    Runs on a scratch git + DVC copy of the project (code, params, pipeline) with its own MLflow
    store, so the project's outputs and registry are untouched.
    """
    step = "CTG branch: dvc repro evaluate_ctg"
    if not (mirror_root / "ctu-uhb" / "RECORDS").is_file():
        return [_row(step, None, None, f"no mirror at {mirror_root}/ctu-uhb")]
    from bench.scratch import make_scratch_project, run_dvc

    with tempfile.TemporaryDirectory(prefix="bench_ctg_branch_") as tmp:
        repo = Path(tmp)
        make_scratch_project(repo)
        t0 = time.perf_counter()
        proc = run_dvc(repo, mirror_root, "repro", "evaluate_ctg")
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        return [_row(step, None, None, f"failed: {tail}")]
    return [_row(step, wall, None, "ingest .. evaluate, default params, 2 cores")]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    def fmt(v: float | None, digits: int) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = ["| step | wall s | peak MB | note |", "|---|---:|---:|---|"]
    lines += [
        f"| {r['step']} | {fmt(r['wall_s'], 3)} | {fmt(r['peak_mb'], 0)} | {r['note']} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="project root with data/")
    parser.add_argument("--skip-stages", action="store_true", help="skip the stage runs")
    parser.add_argument(
        "--skip-branch", action="store_true", help="skip the whole-branch run (minutes)"
    )
    args = parser.parse_args(argv)
    mirror_root = Path(os.environ.get("FETAL_MIRROR", ROOT.parent / "shared" / "data"))
    rows: list[dict[str, Any]] = []
    if not args.skip_stages:
        rows += bench_stages(mirror_root)
    rows += bench_training(args.project)
    rows += bench_scoring(args.project, mirror_root)
    rows += bench_noop_repro(args.project)
    if not args.skip_branch:
        rows += bench_branch(mirror_root)
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
