"""Beyond one machine, for real and secured: a Dask scheduler with mutual TLS and separate worker
processes runs the image maps (a worker or client without the cluster's certificate is refused),
and a Prefect process work pool with a worker process runs the training deployment against a
Prefect server that requires its auth string.

Every process is a real one on loopback, started with the commands ``make services`` runs
(``stages.common.services``: ``dask scheduler``/``dask worker`` with the project's CA, ``prefect
server start`` with ``PREFECT_SERVER_API_AUTH_STRING``), as an operator would start them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stages.common import services
from stages.common.parallel import DaskSecurityError, map_images
from stages.common.params import load_params
from stages.common.registry import tracking
from tests.conftest import ROOT, set_params
from tests.integration.services import (
    BIN,
    prefect_api_post,
    prefect_server,
    stop,
    tls_dask_cluster,
)
from tests.integration.toy_pipeline import install_toy_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _worker_pid(_: int) -> int:
    return os.getpid()


def _square_or_fail(x: int) -> int:
    if x == 3:
        raise ValueError("bad item")
    return x * x


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Credentials and certificates made as on the first ``make services``."""
    folder = tmp_path_factory.mktemp("secrets") / "secrets"
    services.ensure_secrets(folder, ["127.0.0.1"])
    return folder


@pytest.fixture(scope="module")
def cluster(secrets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tls_dask_cluster(secrets, tmp_path_factory.mktemp("dask")) as address:
        yield address


@contextlib.contextmanager
def dask_environment(tls: dict[str, str] | None) -> Iterator[None]:
    """The ``DASK_DISTRIBUTED__COMM__TLS__*`` variables set (``tls``) or unset for the block, and
    Dask's configuration read again from them (it reads the environment once, at import)."""
    import dask

    names = ("DASK_DISTRIBUTED__COMM__TLS__CA_FILE", "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
             "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY")  # fmt: skip
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ.pop(n, None)
    os.environ.update(tls or {})
    dask.config.refresh()
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
        dask.config.refresh()


def test_image_maps_run_on_a_tls_scheduler_and_workers(cluster: str, secrets: Path):
    params = {"scheduler_address": cluster, "n_workers": 0}
    with dask_environment(services.dask_tls_env(secrets)):  # as client.env sets them
        results = map_images(_square_or_fail, list(range(8)), params)
        pids = {r.value for r in map_images(_worker_pid, list(range(40)), params)}
    # order kept, the bad item reported by name of its error, the rest computed
    assert [r.value for r in results if r.ok] == [0, 1, 4, 16, 25, 36, 49]
    assert not results[3].ok and "bad item" in results[3].error
    # the work ran in the worker processes, not in this one
    assert os.getpid() not in pids and len(pids) >= 1


def test_a_worker_or_client_without_the_certificate_is_refused(
    cluster: str, secrets: Path, tmp_path: Path
):
    """A worker with no certificate cannot join; a client with a certificate of another CA
    cannot connect; the pipeline's client without TLS files stops with the variables to set."""
    with dask_environment(None):
        _without_the_certificate(cluster, secrets, tmp_path)


def _without_the_certificate(cluster: str, secrets: Path, tmp_path: Path) -> None:
    from distributed import Client, Security

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(tmp_path / "intruder.log", "w") as log:
        intruder = subprocess.Popen(
            [str(BIN / "dask"), "worker", cluster, "--nthreads", "1", "--no-dashboard",
             "--death-timeout", "15"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        code = intruder.wait(60)
    except subprocess.TimeoutExpired:
        intruder.kill()
        code = None
    assert code not in (None, 0), (tmp_path / "intruder.log").read_text()[-2000:]
    with pytest.raises((OSError, TimeoutError)):  # a certificate the cluster's CA did not sign
        Client(cluster, security=Security.temporary(), timeout=5)
    with pytest.raises(DaskSecurityError, match="DASK_DISTRIBUTED__COMM__TLS__CA_FILE"):
        map_images(_worker_pid, list(range(40)), {"scheduler_address": cluster, "n_workers": 0})
    tls = {k: v for k, v in services.dask_tls_env(secrets).items()}
    with Client(cluster, security=Security(
        tls_ca_file=tls["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"],
        tls_client_cert=tls["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"],
        tls_client_key=tls["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"],
        require_encryption=True), timeout=10) as client:  # fmt: skip
        assert len(client.scheduler_info()["workers"]) == 2  # the intruder never joined


def test_a_plain_tcp_scheduler_on_another_machine_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="must be tls://"):
        map_images(_worker_pid, list(range(40)), {"scheduler_address": "tcp://10.1.2.3:8786",
                                                   "n_workers": 0})  # fmt: skip


def test_process_work_pool_worker_runs_the_training_deployment(
    toy_repo: Path, tmp_path: Path, secrets: Path
):
    """Against a server that requires its auth string: the deploy command and the worker read
    ``PREFECT_API_AUTH_STRING`` from the environment, as on a machine set up by client.env."""
    install_toy_pipeline(toy_repo, remote=tmp_path / "remote")
    schedule = load_params("schedule", ROOT / "params.yaml")  # every key: typed settings
    set_params(toy_repo, {"schedule": {**schedule, "retrain_cron": "0 3 * * 1"}})
    home = tmp_path / "prefect"
    home.mkdir()
    with prefect_server(home, secrets) as env:
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
