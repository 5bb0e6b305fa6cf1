"""Scheduled retraining and labour monitoring as Prefect deployments.

``python -m flows.deploy`` (``make deploy``) serves two deployments from this process:

- ``training/weekly-retraining``: the training flow on the cron of ``schedule.retrain_cron``
  (``schedule.timezone``), with a deployment concurrency limit (``schedule.concurrency_limit``,
  default 1) so that two retrainings never overlap: with ``collision_strategy: ENQUEUE`` the
  second run waits (state ``AwaitingConcurrencySlot``), with ``CANCEL_NEW`` it is cancelled.
- ``labour-monitor/bedside``: the monitoring flow, run on demand with a folder parameter.

Beyond one machine (``--work-pool``): the same deployments are registered to a Prefect work pool
of type ``process`` instead of being served, and any machine running a worker executes them::

    prefect work-pool create fetal-process --type process
    python -m flows.deploy --work-pool fetal-process     # registers and exits
    prefect worker start --pool fetal-process             # on each machine with the repo

Both need a Prefect server (``prefect server start``, UI on http://127.0.0.1:4200; secured:
``make services``) and ``PREFECT_API_URL`` pointing at it, with ``PREFECT_API_AUTH_STRING`` when
the server requires one (``source .secrets/client.env``). Stop a serving process before the
server, not after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

from stages.common.params import project_root
from stages.common.settings import load_settings, settings

TRAINING_DEPLOYMENT = "weekly-retraining"
MONITOR_DEPLOYMENT = "bedside"


@settings
class ScheduleSettings:
    """The ``schedule`` section of params.yaml."""

    retrain_cron: str  # cron of training/weekly-retraining
    timezone: str  # time zone of retrain_cron
    concurrency_limit: int  # retrainings at once
    collision_strategy: Literal["ENQUEUE", "CANCEL_NEW"]  # a run over the limit waits or is skipped
    work_pool: str  # the process work pool of `--work-pool` (documented default)


def concurrency(schedule: ScheduleSettings) -> Any:
    """The deployment concurrency limit and what happens to a colliding run."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(
        limit=schedule.concurrency_limit,
        collision_strategy=ConcurrencyLimitStrategy(schedule.collision_strategy),
    )


def build_deployments(work_pool: str | None = None) -> list[Any]:
    """The two deployments, from params.yaml (``schedule`` and ``monitor`` sections)."""
    from prefect.schedules import Cron

    from flows.monitor import monitor_flow
    from flows.training import training_flow

    schedule = load_settings(ScheduleSettings, "schedule")
    root = str(project_root())
    pool = {"work_pool_name": work_pool} if work_pool else {}
    train, mon = training_flow, monitor_flow
    if work_pool:
        # Workers load the flows from this checkout (same path on every machine: a shared
        # volume or an identical clone); a git URL works here too.
        train = training_flow.from_source(root, "flows/training.py:training_flow")
        mon = monitor_flow.from_source(root, "flows/monitor.py:monitor_flow")
    training = train.to_deployment(
        name=TRAINING_DEPLOYMENT,
        schedules=[Cron(schedule.retrain_cron, timezone=schedule.timezone)],
        concurrency_limit=concurrency(schedule),
        parameters={"repo": root, "push": True},
        description="Weekly retraining: dvc repro per stage, registry promotion, dvc push.",
        tags=["fetal", "training"],
        **pool,
    )
    monitor = mon.to_deployment(
        name=MONITOR_DEPLOYMENT,
        parameters={"folder": str(Path(root) / "data" / "live")},
        description="Follow a CTG being recorded (CSV chunks) and alert on the risk timeline.",
        tags=["fetal", "monitoring"],
        **pool,
    )
    return [training, monitor]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__)
    parser.add_argument(
        "--work-pool",
        default=None,
        help="register the deployments to this process work pool (run by `prefect worker "
        "start --pool NAME`) instead of serving them from this process",
    )
    args = parser.parse_args(argv)
    from flows.tasks import check_prefect_api

    problem = check_prefect_api()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.work_pool:
        from prefect.deployments.runner import deploy

        # The code is already on the worker's machine (a clone of the repo): no image, no push.
        deployments = build_deployments(args.work_pool)
        ids = deploy(*deployments, work_pool_name=args.work_pool, build=False, push=False)
        print(f"registered {len(ids)} deployments to work pool {args.work_pool}")
        return 0
    from prefect import serve

    serve(*build_deployments())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
