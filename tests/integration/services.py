"""Test helpers for real services: free ports, MLflow and Prefect servers (open, or secured the
way ``make services`` secures them), a Dask cluster with mutual TLS, the CI-provided PostgreSQL.

``.ci/services.sh`` starts PostgreSQL and checks chromium, exporting ``FETAL_TEST_POSTGRES_URI``
and ``FETAL_TEST_CHROMIUM``. Locally a missing service skips the test with the reason; in CI
(``CI=true``) it fails it, so a broken service setup can never pass silently. The secured servers
are started with the commands of ``stages.common.services`` (the code ``make services`` runs), on
free loopback ports, with credentials made in a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def require_env(var: str, what: str) -> str:
    """The value of ``var``; skip locally (fail in CI) when it is unset or empty."""
    value = os.environ.get(var, "").strip()
    if value:
        return value
    message = f"{what} not available: {var} is unset (run `source .ci/services.sh`)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early when ``proc`` died."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s: {last}")


def stop(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM the process group (servers fork workers), then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """``mlflow server`` on a free loopback port; yields its URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc)
        yield url
    finally:
        stop(proc)


def post_json(
    url: str,
    payload: object,
    timeout_s: float = 60,
    content_type: str = "application/json",
    token: str | None = None,
) -> tuple[int, dict]:
    """POST ``payload`` (encoded as JSON unless already bytes), with ``Authorization: Bearer
    token`` when given; the status and the decoded JSON answer (a 4xx too)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def register_champion(
    tracking_uri: str, log_model: Callable[[], str], name: str = "ctg-distress"
) -> str:
    """In the store at ``tracking_uri``: log a model (``log_model()`` inside a run, returning its
    URI), register it as ``name`` and promote it to champion; returns ``models:/name@champion``.

    ``MLFLOW_TRACKING_URI`` points at the store only meanwhile, so callers of any scope can use it.
    """
    from stages.common.registry import tracking

    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        with tracking.run("serving", name):
            model_uri = log_model()
        version = tracking.register_model(model_uri, name, {"cv_auc": 0.6}, f"serve-{name}")
        tracking.set_alias(name, tracking.CHAMPION, version)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return tracking.champion_uri(name)


@contextlib.contextmanager
def model_server(
    model_uri: str, tracking_uri: str, log: Path, workers: int = 1, timeout_s: float = 180
) -> Iterator[str]:
    """``mlflow models serve -m model_uri --env-manager local`` on a free loopback port; yields
    its URL and stops it (the whole process group, workers included) when the block ends.

    The scoring server is ``uvicorn`` from the venv (on the PATH); the model's loader comes from
    the repository (on PYTHONPATH).
    """
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    argv = [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]  # fmt: skip
    with serving_process(argv, env, log, port, timeout_s) as url:
        yield url


@contextlib.contextmanager
def serving_process(
    argv: list[str], env: dict[str, str], log: Path, port: int, timeout_s: float
) -> Iterator[str]:
    """``argv`` (a scoring server on ``port``) until its ``/ping`` answers; yields its URL and
    stops it (the whole process group, workers included) when the block ends."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", timeout_s, proc)
        yield url
    finally:
        stop(proc)


SERVE_TOKEN = "test-serving-token-0123456789"  # the Bearer token of the test servers


@contextlib.contextmanager
def fetal_server(
    model_uri: str, tracking_uri: str, log: Path, token: str = SERVE_TOKEN, timeout_s: float = 180
) -> Iterator[str]:
    """``fetal serve --model model_uri`` on a free loopback port, ``FETAL_SERVE_TOKEN=token``;
    yields its URL and stops it when the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "FETAL_SERVE_TOKEN": token,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    argv = [str(BIN / "fetal"), "serve", "--model", model_uri, "--port", str(port)]
    with serving_process(argv, env, log, port, timeout_s) as url:
        yield url


def create_database(admin_uri: str, prefix: str) -> str:
    """A fresh database on the PostgreSQL server of ``admin_uri``; returns its URI."""
    import uuid

    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_uri.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def prefect_server(home: Path, secrets: Path | None = None) -> Iterator[dict[str, str]]:
    """``prefect server start`` on a free loopback port; yields the environment pointing at it.

    With ``secrets`` (a folder made by ``stages.common.services.ensure_secrets``) the server
    requires ``PREFECT_SERVER_API_AUTH_STRING`` and the yielded environment carries the client's
    ``PREFECT_API_AUTH_STRING``, as ``.secrets/client.env`` does. The scheduler loop runs every
    2 s (instead of 60 s) so scheduled runs appear quickly; the UI is told the API's port too
    (it assumes 4200 otherwise).
    """
    from stages.common import services

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    }
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server_env = dict(env)
    if secrets is not None:
        argv, secured = services.prefect_command(secrets, "127.0.0.1", port, home)
        server_env.update(secured)
        env["PREFECT_API_AUTH_STRING"] = services.prefect_auth_string(secrets)
    with open(home / "server.log", "w") as fh:
        server = subprocess.Popen(
            argv, stdout=fh, stderr=subprocess.STDOUT, env=server_env, start_new_session=True,
        )  # fmt: skip
    try:
        wait_http(f"{api}/health", 120, server)
        yield env
    finally:
        stop(server)


@contextlib.contextmanager
def tls_dask_cluster(secrets: Path, logs: Path, n_workers: int = 2) -> Iterator[str]:
    """A ``dask scheduler`` with mutual TLS and ``n_workers`` workers holding the certificate,
    started with ``make services``' commands; yields the ``tls://`` address."""
    from stages.common import services

    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    env = {"PYTHONPATH": str(ROOT)}  # workers import the project's functions
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            services.process(
                services.dask_scheduler_command(secrets, "127.0.0.1", port), env,
                logs / "scheduler.log",
            )
        )  # fmt: skip
        for i in range(n_workers):
            argv = [*services.dask_worker_command(secrets, address), "--name", f"w{i}"]
            stack.enter_context(services.process(argv, env, logs / f"worker{i}.log"))
        wait_workers(address, n_workers, services.dask_tls_env(secrets))
        yield address


def wait_workers(address: str, n_workers: int, tls_env: dict[str, str], timeout_s: float = 90):
    """Wait until ``n_workers`` workers joined the scheduler at ``address`` (a client with the
    TLS files of ``tls_env``)."""
    from distributed import Client, Security

    security = Security(
        tls_ca_file=tls_env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"],
        tls_client_cert=tls_env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT"],
        tls_client_key=tls_env["DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"],
        require_encryption=True,
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with Client(address, security=security, timeout=5) as client:
                client.wait_for_workers(n_workers, timeout=max(1, deadline - time.monotonic()))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def serving_deployments(env: dict[str, str], log: Path, cwd: Path) -> Iterator[subprocess.Popen]:
    """``python -m flows.deploy`` (serves the deployments) until the block ends.

    Leave this block before the server's: a serving process outliving its server hangs.
    """
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(BIN / "python"), "-m", "flows.deploy"], cwd=cwd, env=env,
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        stop(proc)


def prefect_api_post(
    env: dict[str, str], path: str, body: dict | None = None, timeout_s: float = 60
) -> object:
    """POST ``body`` to the Prefect REST API of ``env``; the decoded JSON answer.

    A server that has just started (or is busy on a loaded machine) answers 503 for a while:
    that is retried until ``timeout_s``; any other HTTP error is raised at once.
    """
    import base64
    import json
    import urllib.error

    headers = {"content-type": "application/json"}
    if env.get("PREFECT_API_AUTH_STRING"):  # HTTP basic, as the Prefect client sends it
        token = base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(
        env["PREFECT_API_URL"] + path,
        data=json.dumps(body or {}).encode(),
        headers=headers,
        method="POST",
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(1)
