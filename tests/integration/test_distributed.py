"""Beyond one machine, for real: a Dask scheduler with separate worker processes runs the image
maps, and a Prefect process work pool with a worker process runs the training deployment.

Every process is a real one on loopback, started the way an operator would start it
(``dask scheduler`` / ``dask worker``, ``prefect work-pool create`` / ``prefect worker start``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stages.common.parallel import map_images
from stages.common.registry import tracking
from tests.conftest import ROOT, set_params
from tests.integration.services import (
    BIN,
    free_port,
    prefect_api_post,
    prefect_server,
    stop,
)
from tests.integration.toy_pipeline import install_toy_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _worker_pid(_: int) -> int:
    return os.getpid()


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("bad item")
    return x * x


@contextlib.contextmanager
def dask_cluster(tmp_path: Path, n_workers: int = 2) -> Iterator[str]:
    """``dask scheduler`` and ``n_workers`` ``dask worker`` processes; yields the address."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # workers import the project's functions
    procs = [
        subprocess.Popen(
            [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
            ],
            stdout=open(tmp_path / "scheduler.log", "w"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )  # fmt: skip
    ]
    try:
        for i in range(n_workers):
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--name",
                        f"w{i}",
                    ],
                    stdout=open(tmp_path / f"worker{i}.log", "w"),
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )  # fmt: skip
            )
        from distributed import Client

        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(n_workers, timeout=max(1, deadline - time.monotonic()))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            stop(p)


def test_image_maps_run_on_a_separate_dask_scheduler_and_workers(tmp_path: Path):
    with dask_cluster(tmp_path) as address:
        params = {"scheduler_address": address}
        results = map_images(_square_or_fail, list(range(8)), params)
        pids = {r.value for r in map_images(_worker_pid, list(range(40)), params)}
    # order kept, the bad item reported by name of its error, the rest computed
    assert [r.value for r in results if r.ok] == [0, 1, 4, 16, 25, 36, 49]
    assert not results[3].ok and "bad item" in results[3].error
    # the work ran in the worker processes, not in this one
    assert os.getpid() not in pids and len(pids) >= 1


def test_process_work_pool_worker_runs_the_training_deployment(toy_repo: Path, tmp_path: Path):
    install_toy_pipeline(toy_repo, remote=tmp_path / "remote")
    set_params(toy_repo, {"schedule": {"retrain_cron": "0 3 * * 1", "timezone": "UTC"}})
    home = tmp_path / "prefect"
    home.mkdir()
    with prefect_server(home) as env:
        env.update(
            {
                "FETAL_PROJECT_ROOT": str(toy_repo),
                "PYTHONPATH": str(ROOT),
                "PREFECT_WORKER_QUERY_SECONDS": "2",
            }
        )
        pool = "fetal-process-test"
        subprocess.run(
            [str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip
        reg = subprocess.run(
            [str(BIN / "python"), "-m", "flows.deploy", "--work-pool", pool],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert reg.returncode == 0, reg.stdout + reg.stderr
        assert "registered 2 deployments" in reg.stdout
        deps = {d["name"]: d for d in prefect_api_post(env, "/deployments/filter")}
        dep = deps["weekly-retraining"]
        assert dep["work_pool_name"] == pool
        run = prefect_api_post(
            env, f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"push": True}}
        )
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
            cwd=ROOT, env=env, stdout=open(home / "worker.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            state = ""
            while time.monotonic() < deadline:
                runs = prefect_api_post(
                    env, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run["id"]]}}}
                )
                state = runs[0]["state"]["type"]
                if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                    break
                time.sleep(2)
        finally:
            stop(worker)
    log = (home / "worker.log").read_text()
    assert state == "COMPLETED", f"run ended {state!r}; worker log:\n{log[-3000:]}"
    assert tracking.alias_version("toy-ctg", "champion") == "1"
    assert (toy_repo / "data/reports/registry_comparison.md").is_file()
