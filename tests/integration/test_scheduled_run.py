"""A scheduled retraining happens by itself and ends with a promotion decision.

Real processes: ``prefect server start`` (requiring its auth string, as ``make services``
starts it) and ``python -m flows.deploy`` (the project's own deployment entry point, reading
``PREFECT_API_AUTH_STRING`` from its environment) serving the training deployment of a toy
two-branch pipeline whose cron fires every minute. Nobody triggers the run: the scheduler creates
it, the serving process executes it, and the test only watches the API and the registry.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stages.common import services
from stages.common.params import load_params
from stages.common.registry import tracking
from tests.conftest import ROOT, set_params
from tests.integration.services import prefect_api_post, prefect_server, serving_deployments
from tests.integration.toy_pipeline import install_toy_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _finished_runs(env: dict[str, str]) -> list[dict]:
    deps = {d["name"]: d for d in prefect_api_post(env, "/deployments/filter")}
    if "weekly-retraining" not in deps:
        return []
    return prefect_api_post(
        env,
        "/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [deps["weekly-retraining"]["id"]]},
                       "state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}},
    )  # fmt: skip


def test_scheduled_retraining_runs_by_itself_and_promotes(toy_repo: Path, tmp_path: Path):
    install_toy_pipeline(toy_repo, remote=tmp_path / "remote")
    schedule = load_params("schedule", ROOT / "params.yaml")  # every key: typed settings
    every_minute = {"retrain_cron": "* * * * *", "concurrency_limit": 1,
                    "collision_strategy": "ENQUEUE"}  # fmt: skip
    set_params(toy_repo, {"schedule": {**schedule, **every_minute}})
    home = tmp_path / "prefect"
    home.mkdir()
    secrets = tmp_path / "secrets"
    services.ensure_secrets(secrets, ["127.0.0.1"])
    with prefect_server(home, secrets) as env:
        env.update(
            {
                "FETAL_PROJECT_ROOT": str(toy_repo),  # the deployment's repo parameter
                "PYTHONPATH": str(ROOT),
                "PREFECT_RUNNER_POLL_FREQUENCY": "2",
            }
        )
        with serving_deployments(env, home / "serve.log", ROOT):
            deadline = time.monotonic() + 240
            runs: list[dict] = []
            while time.monotonic() < deadline and not runs:
                runs = _finished_runs(env)
                time.sleep(2)
    log = (home / "serve.log").read_text()
    assert runs, f"no scheduled run finished within 240 s; serve log:\n{log[-3000:]}"
    assert runs[0]["state"]["type"] == "COMPLETED", log[-3000:]
    assert runs[0]["auto_scheduled"] is True  # created by the scheduler, not by a person
    # the run reproduced the pipeline and decided: the first version is the champion
    assert tracking.alias_version("toy-ctg", "champion") == "1"
    table = (toy_repo / "data/reports/registry_comparison.md").read_text()
    assert "PROMOTED" in table and "toy-ctg" in table
    assert (toy_repo / "dvc.lock").is_file()
