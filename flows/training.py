"""The training flow: every DVC stage as a Prefect task, then registry promotion and ``dvc push``.

Each task runs ``dvc --wait-for-lock repro -s <stage>``: DVC decides whether the stage changed
(it does only what changed) and records the lineage in ``dvc.lock``. Stages run in the order of
DVC's own stage graph (the one ``dvc dag`` draws); the CTG (``*_ctg``) and ultrasound (``*_us``)
branches are submitted as two concurrent tasks. DVC holds its repository lock only while it
hashes and commits, not while a stage's command runs, so the two branches' commands overlap.

Promotion is decided once, by the training stages themselves (``dvc repro`` without Prefect
promotes the same way): the flow only reports it. It notes each registered model's champion
when it starts; after the stages it reads the champion again, the decision the stage tagged on
the challenger and the champion's history, and publishes champion before, champion after and why
as a Prefect markdown artifact (``registry-comparison``) and an MLflow artifact.

Run it: ``python -m flows.training [--stages a b] [--no-push]`` (``--help``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.arrivals import report_arrivals
from flows.outcomes import (
    STATUS_TEXT,
    StageResult,
    comparison_markdown,
    not_run_row,
    report_row,
    repro_outcome,
)

BRANCH_SUFFIXES: dict[str, str] = {"ctg": "_ctg", "us": "_us"}
LOCK_NAME = "fetal-training.lock"


# --------------------------------------------------------------------------- pure helpers


def branches(order: list[str]) -> dict[str, list[str]]:
    """Split an ordered stage list into modality branches by name suffix; the rest is 'other'."""
    out: dict[str, list[str]] = {b: [] for b in BRANCH_SUFFIXES}
    out["other"] = []
    for stage in order:
        branch = next((b for b, suf in BRANCH_SUFFIXES.items() if stage.endswith(suf)), "other")
        out[branch].append(stage)
    return {b: s for b, s in out.items() if s}


def registry_targets(params: dict[str, Any], stages: list[str]) -> list[dict[str, Any]]:
    """The registered models made by ``stages``: params sections with ``registered_name``."""
    return [
        {
            "stage": stage,
            "name": params[stage]["registered_name"],
            "metric": params[stage].get("promote_metric", "cv_auc"),
            "margin": float(params[stage].get("promote_margin", 0.0)),
        }
        for stage in stages
        if isinstance(params.get(stage), dict) and "registered_name" in params[stage]
    ]


# --------------------------------------------------------------------------- I/O helpers


def stage_order(root: Path) -> list[str]:
    """The pipeline stages of the DVC project at ``root``, upstream first (DVC's own graph).

    ``Repo.index.graph`` is the stage graph ``dvc dag`` and ``dvc repro`` use (edges point from
    a stage to the stages it depends on, cycles already rejected); its reverse in topological
    order runs every stage after its dependencies. Ties keep the declaration order of
    ``Repo.index.stages``. ``.dvc`` files (tracked data, not pipeline stages) are left out.

    Raises
    ------
    dvc.exceptions.CyclicGraphError
        When outputs and dependencies form a cycle.
    """
    import networkx as nx
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        index = repo.index
        position = {stage: i for i, stage in enumerate(index.stages)}
        upstream_first = nx.lexicographical_topological_sort(
            index.graph.reverse(copy=False), key=position.__getitem__
        )
        # ``Stage.addressing`` is relative to the cwd; ``dvc repro -s`` runs in ``root``.
        return [
            s.name if s.path_in_repo == PROJECT_FILE else f"{s.path_in_repo}:{s.name}"
            for s in upstream_first
            if isinstance(s, PipelineStage)
        ]


def dvc_command() -> list[str]:
    """The ``dvc`` of the running interpreter's venv (stages say ``python``: same venv)."""
    venv_dvc = Path(sys.executable).parent / "dvc"
    return [str(venv_dvc) if venv_dvc.exists() else "dvc"]


def stage_env() -> dict[str, str]:
    """Environment for ``dvc``: the venv first on PATH so that ``python`` is the project's."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


@contextmanager
def project_env(repo: str) -> Iterator[None]:
    """``FETAL_PROJECT_ROOT=repo`` while tracking code runs (git commit, default store)."""
    old = os.environ.get("FETAL_PROJECT_ROOT")
    os.environ["FETAL_PROJECT_ROOT"] = repo
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FETAL_PROJECT_ROOT", None)
        else:
            os.environ["FETAL_PROJECT_ROOT"] = old


@contextmanager
def workspace_lock(repo: Path, logger: Any) -> Iterator[None]:
    """One training run per workspace: a second run logs and waits instead of overlapping.

    The deployment's concurrency limit guards scheduled runs; this guards every run, including
    ad-hoc ``python -m flows.training`` started next to a scheduled one. The OS releases the
    lock when the holder dies, so a killed run never leaves a stale lock.
    """
    path = repo / ".dvc" / "tmp" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another training run holds %s: waiting for it to finish", path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            released = release_stale_dvc_locks(repo)
            if released:
                logger.warning("released DVC locks of dead processes: %s", released)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _is_dead(pid: int) -> bool:
    """True when ``pid`` is gone or a zombie (killed, but never reaped by its new parent)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def release_stale_dvc_locks(repo: Path) -> list[int]:
    """Drop entries of DVC's stage rwlock held by dead processes; the PIDs released.

    Why not DVC itself: dvc 3.67.1 (pinned in pyproject.toml) has no public API or option for
    this. ``--wait-for-lock`` waits only for the repository lock (``.dvc/tmp/lock``), never for
    the per-output rwlock, and ``dvc.rwlock._check_blockers`` clears an entry only when
    ``psutil.pid_exists`` is False. A ``dvc`` killed in a container whose PID 1 does not reap
    orphans stays a zombie, which ``pid_exists`` reports as alive: every later ``dvc repro`` of
    those outputs fails as "busy" and DVC's advice is to delete ``.dvc/tmp/rwlock`` by hand.
    This does that edit for dead and zombie holders only, through DVC's own guarded editor
    ``dvc.rwlock._edit_rwlock`` (private: re-check it when upgrading DVC;
    ``tests/integration/test_faults.py`` kills a run mid-stage and fails if it stops working).
    Live holders are left alone.
    """
    from dvc.fs import localfs
    from dvc.rwlock import _edit_rwlock  # private in dvc 3.67.1, see above

    lock_dir = repo / ".dvc" / "tmp"
    if not (lock_dir / "rwlock").is_file():
        return []
    dead: set[int] = set()
    with _edit_rwlock(str(lock_dir), localfs, False) as lock:
        for path, info in list(lock["write"].items()):
            if _is_dead(int(info["pid"])):
                dead.add(int(info["pid"]))
                del lock["write"][path]
        for path, infos in list(lock["read"].items()):
            keep = [i for i in infos if not _is_dead(int(i["pid"]))]
            dead.update(int(i["pid"]) for i in infos if i not in keep)
            if keep:
                lock["read"][path] = keep
            else:
                del lock["read"][path]
    return sorted(dead)


# --------------------------------------------------------------------------- tasks


@task(retries=2, retry_delay_seconds=10, task_run_name="repro-{stage}")
def repro_stage(repo: str, stage: str, timeout_s: float | None = None) -> StageResult:
    """``dvc repro -s <stage>``: runs the stage only if its deps/params/cmd changed."""
    logger = get_run_logger()
    start = time.perf_counter()
    cmd = [*dvc_command(), "--wait-for-lock", "repro", "-s", stage]
    proc = subprocess.run(
        cmd, cwd=repo, env=stage_env(), capture_output=True, text=True, timeout=timeout_s
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        logger.error("stage %s failed after %.1f s:\n%s", stage, seconds, tail)
        raise RuntimeError(f"dvc repro -s {stage} failed (exit {proc.returncode}):\n{tail}")
    outcome = repro_outcome(proc.stdout)
    logger.info("stage %s %s in %.1f s", stage, STATUS_TEXT[outcome], seconds)
    return StageResult(stage, round(seconds, 2), outcome == "ran", outcome == "restored")


@task(task_run_name="branch-{name}")
def run_branch(
    repo: str, name: str, stages: list[str], retries: int, timeout_s: float | None
) -> list[StageResult]:
    """The stages of one modality, in order; the first failure stops the branch."""
    logger = get_run_logger()
    start = time.perf_counter()
    step = repro_stage.with_options(retries=retries)
    results = [step(repo, s, timeout_s) for s in stages]
    logger.info("branch %s: %d stages in %.1f s", name, len(results), time.perf_counter() - start)
    return results


@task(retries=2, retry_delay_seconds=10)
def dvc_push(repo: str) -> str:
    """Push every cached output to the default DVC remote (``.dvc-remote`` locally, or S3)."""
    logger = get_run_logger()
    proc = subprocess.run(
        [*dvc_command(), "--wait-for-lock", "push"],
        cwd=repo,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dvc push failed:\n{proc.stdout}\n{proc.stderr}")
    summary = (proc.stdout.strip().splitlines() or ["nothing to push"])[-1]
    logger.info("dvc push: %s", summary)
    return summary


@task
def champions(repo: str, targets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each registered model's champion and last history entry, before the stages run."""
    from stages.common.registry import tracking

    out = {}
    with project_env(repo):
        for t in targets:
            try:
                history = tracking.champion_history(t["name"])
            except Exception:  # not registered yet
                history = []
            seq = history[-1]["seq"] if history else 0
            out[t["name"]] = {"champion": tracking.alias_version(t["name"], "champion"), "seq": seq}
    return out


@task
def promote(
    repo: str, target: dict[str, Any], before: dict[str, Any], status: str = "ran"
) -> dict[str, Any]:
    """Report what the training stage decided (it decides; the flow never does)."""
    from stages.common.registry import tracking

    logger = get_run_logger()
    name = target["name"]
    with project_env(repo):
        after = tracking.alias_version(name, tracking.CHAMPION)
        challenger = tracking.alias_version(name, tracking.CHALLENGER)
        verdict: dict[str, Any] = {}
        history: list[dict[str, Any]] = []
        if challenger is not None:
            tags = tracking.client().get_model_version(name, challenger).tags
            verdict = json.loads(tags.get("promotion_verdict") or "{}")
            history = tracking.champion_history(name)
    row = not_run_row(
        report_row(target, before, after, challenger, verdict, history), target["stage"], status
    )
    logger.info("%s: %s (%s)", name, row["decision"], row["reason"])
    return row


@task
def publish(repo: str, rows: list[dict[str, Any]], timings: list[StageResult]) -> str:
    """The comparison table as a Prefect markdown artifact and in an MLflow run."""
    from stages.common.registry import tracking

    table = comparison_markdown(rows)
    timing = "\n".join(
        f"| {t.stage} | {t.seconds:.1f} | {STATUS_TEXT[t.status]} |" for t in timings
    )
    body = (
        "# Training flow: registry comparison\n\n"
        + table
        + "\n\n## Stages\n\n| stage | seconds | status |\n|---|---|---|\n"
        + timing
    )
    create_markdown_artifact(
        key="registry-comparison", markdown=body, description="champion before and after, and why"
    )
    out = Path(repo) / "data" / "reports" / "registry_comparison.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    with (
        project_env(repo),
        tracking.run("orchestration", "training-flow", tags={"flow": "training"}),
    ):
        tracking.log_metrics({f"stage_seconds.{t.stage}": t.seconds for t in timings})
        tracking.log_artifact(out)
    return body


# --------------------------------------------------------------------------- flow


@flow(name="training", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def training_flow(
    repo: str | None = None,
    stages: list[str] | None = None,
    push: bool = True,
    retries: int = 2,
    stage_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Reproduce the pipeline, report the stages' promotion decisions, push the data.

    Parameters
    ----------
    repo
        Project root (default: the folder holding ``params.yaml`` above the cwd).
    stages
        Run only these stages (default: every stage in ``dvc.yaml``).
    push
        ``dvc push`` to the default remote after the stages.
    retries
        Retries of a failing stage (transient failures: a busy lock, a flaky download).
    stage_timeout_s
        Kill a stage that runs longer than this (None: no limit).
    """
    from stages.common.params import project_root

    logger = get_run_logger()
    root = Path(repo).resolve() if repo else project_root()
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    order = [s for s in stage_order(root) if stages is None or s in stages]
    plan = branches(order)
    logger.info("plan: %s", {b: s for b, s in plan.items()})
    with workspace_lock(root, logger):
        targets = registry_targets(params, order)
        before = champions(str(root), targets)
        futures = {
            b: run_branch.submit(str(root), b, s, retries, stage_timeout_s)
            for b, s in plan.items()
            if b != "other"
        }
        # result() raises when a branch failed: nothing below (report, push) runs then.
        timings = [r for b in futures for r in futures[b].result()]
        if "other" in plan:
            timings += run_branch(str(root), "other", plan["other"], retries, stage_timeout_s)
        report_arrivals(str(root), timings)
        if push:
            dvc_push(str(root))
        status = {t.stage: t.status for t in timings}
        rows = [
            promote(str(root), t, before[t["name"]], status.get(t["stage"], "unchanged"))
            for t in targets
        ]
        publish(str(root), rows, timings)
    return {"stages": [asdict(t) for t in timings], "decisions": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.training", description=__doc__)
    parser.add_argument("--repo", default=None, help="project root (default: from the cwd)")
    parser.add_argument("--stages", nargs="*", default=None, help="only these stages")
    parser.add_argument("--no-push", action="store_true", help="skip dvc push")
    parser.add_argument("--retries", type=int, default=2)
    args = parser.parse_args(argv)
    from flows.tasks import check_prefect_api

    problem = check_prefect_api()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        training_flow(
            repo=args.repo, stages=args.stages, push=not args.no_push, retries=args.retries
        )
    except Exception as exc:  # the flow's logs carry the detail; say what failed in one line
        print(f"training flow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
