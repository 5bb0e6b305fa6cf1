"""The training flow: every DVC stage as a Prefect task, then ``dvc push``, then the champions.

Each stage task runs ``dvc --wait-for-lock repro -s <stage>``: DVC decides whether the stage
changed (it does only what changed) and records the lineage in ``dvc.lock``. Stages run in the
order of DVC's own stage graph (the one ``dvc dag`` draws); the CTG (``*_ctg``) and ultrasound
(``*_us``) branches are submitted as two concurrent tasks. DVC holds its repository lock only
while it hashes and commits, not while a stage's command runs, so the two branches' commands
overlap. The register stages (``register_ctg``, ``register_us``) add versions, nothing more.

Then, as ``make pipeline`` does: ``dvc push`` (task ``dvc_push``), and only when it succeeded,
task ``promote_champions``: each registered version decided against the champion of the moment,
under the registry lock (:mod:`flows.promote`, the engine of ``fetal promote``). The comparison
(champion before and after each decision, and why) is published as a Prefect markdown artifact
(``registry-comparison``), ``data/reports/registry_comparison.md`` and an MLflow artifact, in a
``finally``: a failed stage or push is reported too (nothing moved, and why). Last, the run
summary (``fetal summary``: each model's champion, its figure, what changed;
``data/reports/summary.md`` and the ``run-summary`` artifact).

The flow runs only in its own project (its deployment's folder, ``FETAL_PROJECT_ROOT`` or the
folder holding ``params.yaml`` above the cwd): a ``repo`` parameter naming another folder is
refused, so whoever can reach the Prefect API decides when training runs, not which code runs.

Run it: ``python -m flows.training [--stages a b] [--no-push]`` (``--help``) from the project
root: ``prefect.toml`` there sets the Prefect home (``.prefect/``) that ``make ui`` shows.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.arrivals import report_arrivals
from flows.dvc_locks import forget_holder, record_holder, release_stale_dvc_locks
from flows.outcomes import STATUS_TEXT, StageResult, repro_outcome
from flows.promote import decide_all, dvc_command, not_decided, registered, write_comparison

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


def stage_env() -> dict[str, str]:
    """Environment for ``dvc``: the venv first on PATH so that ``python`` is the project's."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def training_root(repo: str | None) -> Path:
    """The project this flow may run: its own (``FETAL_PROJECT_ROOT``, else the folder holding
    ``params.yaml`` above the cwd). ``repo`` may only name that same folder: a flow run asked
    over the Prefect API for another folder is refused, not run.
    """
    from stages.common.params import project_root

    root = project_root()
    if repo is not None and Path(repo).resolve() != root:
        raise ValueError(
            f"the training flow runs only in its own project ({root}); repo={repo!r} refused"
        )
    return root


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
                logger.warning("released DVC locks of this machine's dead dvc: %s", released)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- tasks


@task(retries=2, retry_delay_seconds=10, task_run_name="repro-{stage}")
def repro_stage(repo: str, stage: str, timeout_s: float | None = None) -> StageResult:
    """``dvc repro -s <stage>``: runs the stage only if its deps/params/cmd changed."""
    logger = get_run_logger()
    start = time.perf_counter()
    cmd = [*dvc_command(), "--wait-for-lock", "repro", "-s", stage]
    proc = subprocess.Popen(
        cmd, cwd=repo, env=stage_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    record_holder(Path(repo), proc.pid)  # its locks may be released if it dies unreaped
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        forget_holder(Path(repo), proc.pid)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join((out + err).strip().splitlines()[-25:])
        logger.error("stage %s failed after %.1f s:\n%s", stage, seconds, tail)
        raise RuntimeError(f"dvc repro -s {stage} failed (exit {proc.returncode}):\n{tail}")
    outcome = repro_outcome(out)
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
    from flows.promote import push_outputs

    pushed, detail = push_outputs(Path(repo))
    if not pushed:
        raise RuntimeError(f"dvc push failed: {detail}")
    get_run_logger().info("dvc push: %s", detail)
    return detail


@task
def promote_champions(repo: str) -> tuple[list[dict[str, Any]], bool]:
    """Decide every registered version (register reports, in order) against the champion of the
    moment, under the registry lock; run only after ``dvc push`` succeeded. The report rows and
    whether every decision was taken."""
    rows, ok = decide_all(registered(Path(repo)), "training flow")
    for row in rows:
        get_run_logger().info("%s %s: %s (%s)", row["model"], row["challenger"],
                              row["decision"], row["reason"])  # fmt: skip
    return rows, ok


def publish(repo: str, rows: list[dict[str, Any]], timings: list[StageResult]) -> None:
    """The comparison as a Prefect markdown artifact, a report file and an MLflow artifact;
    never raises (it runs in the flow's ``finally``: it must not hide the first failure)."""
    from stages.common.registry import tracking

    logger = get_run_logger()
    try:
        body = write_comparison(Path(repo), rows, "Training flow: registry comparison")
        body += "\n## Stages\n\n| stage | seconds | status |\n|---|---|---|\n" + "\n".join(
            f"| {t.stage} | {t.seconds:.1f} | {STATUS_TEXT[t.status]} |" for t in timings
        )
        create_markdown_artifact(key="registry-comparison", markdown=body,
                                 description="champion before and after, and why")  # fmt: skip
        with tracking.run("orchestration", "training-flow", tags={"flow": "training"}):
            tracking.log_metrics({f"stage_seconds.{t.stage}": t.seconds for t in timings})
            tracking.log_text(body, "registry_comparison.md")
    except Exception as exc:  # reporting must not mask what failed before it
        logger.error("could not publish the registry comparison: %s: %s", type(exc).__name__, exc)


def summarize(repo: str) -> None:
    """The run's last step, as ``fetal summary``: ``data/reports/summary.md`` (and
    ``summary.json``), logged and published as the ``run-summary`` artifact; never raises."""
    from flows.summary import write_summary

    logger = get_run_logger()
    try:
        if registered(Path(repo)):
            body = write_summary(Path(repo))
            logger.info("run summary:\n%s", body)
            what = "each model's champion, its figure, what changed"
            create_markdown_artifact(key="run-summary", markdown=body, description=what)
    except Exception as exc:  # reporting must not mask what failed before it
        logger.error("could not write the run summary: %s: %s", type(exc).__name__, exc)


def run_stages(
    root: Path, plan: dict[str, list[str]], retries: int, timeout_s: float | None
) -> list[StageResult]:
    """The branches, the two modalities concurrently, then the other stages."""
    futures = {
        b: run_branch.submit(str(root), b, s, retries, timeout_s)
        for b, s in plan.items()
        if b != "other"
    }
    timings = [r for b in futures for r in futures[b].result()]  # raises if a branch failed
    if "other" in plan:
        timings += run_branch(str(root), "other", plan["other"], retries, timeout_s)
    report_arrivals(str(root), timings)
    return timings


# --------------------------------------------------------------------------- flow


@flow(name="training", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def training_flow(
    repo: str | None = None,
    stages: list[str] | None = None,
    push: bool = True,
    retries: int = 2,
    stage_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Reproduce the pipeline, push its outputs, then decide the champions.

    Parameters
    ----------
    repo
        Only this flow's own project folder is accepted (:func:`training_root`); None: it.
    stages
        Run only these stages (default: every stage in ``dvc.yaml``).
    push
        ``dvc push`` to the default remote, then decide the champions. False: stages only
        (no champion moves before the inputs are pushed).
    retries
        Retries of a failing stage (transient failures: a busy lock, a flaky download).
    stage_timeout_s
        Kill a stage that runs longer than this (None: no limit).
    """
    logger = get_run_logger()
    root = training_root(repo)
    order = [s for s in stage_order(root) if stages is None or s in stages]
    plan = branches(order)
    logger.info("plan: %s", plan)
    timings: list[StageResult] = []
    rows: list[dict[str, Any]] = []
    why = "push skipped (push=False): champions move only after dvc push"
    with workspace_lock(root, logger):
        try:
            timings = run_stages(root, plan, retries, stage_timeout_s)
            if push:
                dvc_push(str(root))
                rows, decided = promote_champions(str(root))
                if not decided:
                    raise RuntimeError("a champion decision failed: see registry-comparison")
        except Exception as exc:
            why = f"not decided: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            raise
        finally:
            publish(str(root), rows or not_decided(registered(root), why), timings)
            summarize(str(root))
    return {"stages": [asdict(t) for t in timings], "decisions": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.training", description=__doc__)
    parser.add_argument("--repo", default=None, help="project root (default: from the cwd)")
    parser.add_argument("--stages", nargs="*", default=None, help="only these stages")
    parser.add_argument(
        "--no-push", action="store_true", help="skip dvc push (and so the champion decisions)"
    )
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--run-name", default=None, help="the flow run's name in the Prefect UI")
    args = parser.parse_args(argv)
    from flows.tasks import check_prefect_api

    problem = check_prefect_api()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.repo:  # an operator on this machine chooses the project; the API cannot
        os.environ["FETAL_PROJECT_ROOT"] = str(Path(args.repo).resolve())
    try:
        run = (
            training_flow.with_options(flow_run_name=args.run_name)
            if args.run_name
            else training_flow
        )
        run(stages=args.stages, push=not args.no_push, retries=args.retries)
    except Exception as exc:  # the flow's logs carry the detail; say what failed in one line
        print(f"training flow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
