"""The shared services of a multi-machine set-up, each behind its own tool's authentication.

``python -m stages.common.services start --host HOST`` (``make services HOST=...``) starts, bound
to ``HOST``:

- **MLflow** with its basic-auth app (``mlflow server --app-name basic-auth``): the admin password
  comes from a secret file through ``MLFLOW_AUTH_ADMIN_PASSWORD`` (MLflow ships none), the auth
  database and Flask secret key live beside it, and ``default_permission = NO_PERMISSIONS``. Two
  users are made on first start: ``fetal-pipeline`` (MANAGE on every experiment and registered
  model: the flows, stages and workers) and ``fetal-reader`` (READ on every experiment and
  registered model: people who compare versions; they cannot move ``champion``). The registered
  models named in params.yaml are created by the pipeline user, so no one else can own them;
- **Prefect** with ``PREFECT_SERVER_API_AUTH_STRING`` (HTTP basic on every API call but
  ``/health``; the UI asks for it);
- a **Dask scheduler** on ``tls://HOST:PORT`` with the project's own CA (``distributed``'s mutual
  TLS: a worker or client without a certificate from that CA is refused at the handshake),
  no dashboard.

Credentials are made on first start, never overwritten, and kept in ``$FETAL_SECRETS_DIR``
(default ``.secrets/`` in the project root, git-ignored): the folder is mode 0700 and every file
0600. The start writes there ``client.env`` (the pipeline user's environment:
``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, ``PREFECT_API_URL``,
``PREFECT_API_AUTH_STRING``, ``DASK_DISTRIBUTED__COMM__TLS__*``, ``FETAL_SERVE_TOKEN``) and
``reader.env`` (the read-only user's). The flows, the CLI and the workers read the tools' own
variables; nothing else. ``python -m stages.common.services init`` makes the secrets only (to
copy ``tls/`` to the workers before the first start).

Passwords travel in HTTP basic headers: on a network that others can read, put the MLflow and
Prefect ports behind TLS (``docs/operations.md#security``).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from stages.common.certificates import issue_certificate, new_ca, write_secret
from stages.common.params import load_params, project_root

SECRETS_ENV = "FETAL_SECRETS_DIR"
SERVE_TOKEN_ENV = "FETAL_SERVE_TOKEN"
PIPELINE_USER, READER_USER, ADMIN_USER = "fetal-pipeline", "fetal-reader", "admin"
PASSWORD_FILES = {
    "mlflow-admin-password": 32,
    "mlflow-pipeline-password": 32,
    "mlflow-reader-password": 32,
    "mlflow-flask-secret-key": 48,
    "prefect-auth-password": 32,
    "serve-token": 32,
}
# where params.yaml names the registered models: the register stages' sections
REGISTERED_NAME_KEYS = (
    ("register_ctg",),
    ("register_us", "segmenter"),
    ("register_us", "plane_classifier"),
    ("register_us", "autoencoder"),
)


@dataclass(frozen=True)
class Ports:
    mlflow: int = 5000
    prefect: int = 4200
    dask: int = 8786


def secrets_dir() -> Path:
    """``$FETAL_SECRETS_DIR`` or ``<project root>/.secrets``."""
    setting = os.environ.get(SECRETS_ENV, "").strip()
    return Path(setting).expanduser() if setting else project_root() / ".secrets"


def read_secret(folder: Path, name: str) -> str:
    return (folder / name).read_text(encoding="utf-8").strip()


def ensure_secrets(folder: Path, hosts: Sequence[str]) -> list[str]:
    """Make what is missing in ``folder``: the passwords, the CA, the Dask and HTTPS certificates
    (for ``hosts``). Nothing that exists is replaced. Returns the names of the files made."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    made = [
        name
        for name, n_bytes in PASSWORD_FILES.items()
        if write_secret(folder / name, secrets.token_urlsafe(n_bytes).encode())
    ]
    tls = folder / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    if not (tls / "ca.pem").is_file():
        ca_key, ca_pem = new_ca()
        write_secret(tls / "ca-key.pem", ca_key)
        write_secret(tls / "ca.pem", ca_pem)
        made.append("tls/ca.pem")
    for name in ("dask", "server"):
        if not (tls / f"{name}.pem").is_file():
            key, pem = issue_certificate(tls, f"fetal-{name}", hosts)
            write_secret(tls / f"{name}-key.pem", key)
            write_secret(tls / f"{name}.pem", pem)
            made.append(f"tls/{name}.pem")
    return made


# --------------------------------------------------------------------------- environments


def dask_tls_env(folder: Path) -> dict[str, str]:
    """Dask's own configuration variables for a client (or worker) of the TLS scheduler."""
    tls = folder / "tls"
    return {
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(tls / "ca.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(tls / "dask.pem"),
        "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(tls / "dask-key.pem"),
    }


def client_env(folder: Path, host: str, ports: Ports, user: str) -> dict[str, str]:
    """The environment of a client machine: the pipeline's (``user`` = ``fetal-pipeline``, with
    Prefect, Dask and the serving token) or a reader's (MLflow only)."""
    password_file = (
        "mlflow-pipeline-password" if user == PIPELINE_USER else "mlflow-reader-password"
    )
    env = {
        "MLFLOW_TRACKING_URI": f"http://{host}:{ports.mlflow}",
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": read_secret(folder, password_file),
    }
    if user == PIPELINE_USER:
        env.update(
            {
                "PREFECT_API_URL": f"http://{host}:{ports.prefect}/api",
                "PREFECT_API_AUTH_STRING": prefect_auth_string(folder),
                SERVE_TOKEN_ENV: read_secret(folder, "serve-token"),
                **dask_tls_env(folder),
            }
        )
    return env


def prefect_auth_string(folder: Path) -> str:
    return f"fetal:{read_secret(folder, 'prefect-auth-password')}"


def env_file_text(env: dict[str, str]) -> str:
    """``export NAME='value'`` lines (values hold no quote: they are ours)."""
    return "".join(f"export {k}='{v}'\n" for k, v in env.items())


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """Write (replace) an environment file with mode 0600."""
    path.unlink(missing_ok=True)
    write_secret(path, env_file_text(env).encode())


# --------------------------------------------------------------------------- the servers


def mlflow_command(
    folder: Path, host: str, port: int, backend_uri: str, artifacts: str
) -> tuple[list[str], dict[str, str]]:
    """``mlflow server --app-name basic-auth`` and its environment (admin password, auth config
    and Flask secret key from ``folder``)."""
    config = folder / "mlflow-auth.ini"
    if not config.is_file():
        write_secret(
            config,
            (
                "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                f"database_uri = sqlite:///{folder / 'mlflow-auth.db'}\n"
                f"admin_username = {ADMIN_USER}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                # a password check is a PBKDF2 hash (~1 s here): cached for a minute per user;
                # one server worker, so a password change through the API applies at once
                "auth_cache_ttl_seconds = 60\n"
            ).encode(),
        )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": read_secret(folder, "mlflow-admin-password"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": read_secret(folder, "mlflow-flask-secret-key"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_TRACKING_URI": backend_uri,  # never a client's server URL inherited here
    }
    argv = [str(_bin("mlflow")), "server", "--app-name", "basic-auth", "--host", host,
            "--port", str(port), "--backend-store-uri", backend_uri,
            "--artifacts-destination", artifacts, "--workers", "1"]  # fmt: skip
    if not _is_ip(host) and host != "localhost":
        argv += ["--allowed-hosts", f"{host},{host}:{port},localhost,127.0.0.1"]
    return argv, env


def prefect_command(folder: Path, host: str, port: int, home: Path) -> tuple[list, dict]:
    """``prefect server start`` with ``PREFECT_SERVER_API_AUTH_STRING``."""
    api = f"http://{host}:{port}/api"
    env = {
        "PREFECT_SERVER_API_AUTH_STRING": prefect_auth_string(folder),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    argv = [str(_bin("prefect")), "server", "start", "--host", host, "--port", str(port)]
    return argv, env


def dask_scheduler_command(folder: Path, host: str, port: int) -> list[str]:
    """``dask scheduler`` on ``tls://host:port`` with mutual TLS, no dashboard; its plain-HTTP
    routes (health, metrics, cluster info), which distributed starts even without a dashboard,
    on the loopback interface only."""
    tls = folder / "tls"
    return [str(_bin("dask")), "scheduler", "--protocol", "tls", "--host", host,
            "--port", str(port), "--tls-ca-file", str(tls / "ca.pem"),
            "--tls-cert", str(tls / "dask.pem"), "--tls-key", str(tls / "dask-key.pem"),
            "--no-dashboard", "--dashboard-address", "127.0.0.1:0"]  # fmt: skip


def dask_worker_command(folder: Path, address: str, nthreads: int = 1) -> list[str]:
    """``dask worker`` for the TLS scheduler at ``address`` (what each worker machine runs)."""
    tls = folder / "tls"
    return [str(_bin("dask")), "worker", address, "--tls-ca-file", str(tls / "ca.pem"),
            "--tls-cert", str(tls / "dask.pem"), "--tls-key", str(tls / "dask-key.pem"),
            "--nthreads", str(nthreads), "--no-dashboard",
            "--dashboard-address", "127.0.0.1:0"]  # fmt: skip


def _bin(tool: str) -> Path:
    return Path(sys.executable).parent / tool


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- MLflow users


def mlflow_api(url: str, auth: tuple[str, str], path: str, body: dict) -> tuple[int, dict]:
    """POST ``body`` to ``url/path`` with HTTP basic ``auth``: ``(status, JSON answer)``."""
    import requests

    resp = requests.post(f"{url}{path}", json=body, auth=auth, timeout=30)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, {"message": resp.text[:200]}


def bootstrap_mlflow(url: str, folder: Path, registered_names: Sequence[str]) -> None:
    """Users, grants and registered models, idempotently (an existing one is left as it is).

    ``fetal-pipeline``: MANAGE on every experiment and registered model; ``fetal-reader``: READ.
    The registered models are created by the pipeline user, so that nobody else owns them.
    """
    admin = (ADMIN_USER, read_secret(folder, "mlflow-admin-password"))
    grants = {PIPELINE_USER: "MANAGE", READER_USER: "READ"}
    for user, password_file in ((PIPELINE_USER, "mlflow-pipeline-password"),
                                (READER_USER, "mlflow-reader-password")):  # fmt: skip
        body = {"username": user, "password": read_secret(folder, password_file)}
        _expect(mlflow_api(url, admin, "/api/2.0/mlflow/users/create", body), "create", user)
        for resource in ("experiment", "registered_model"):
            grant = {"username": user, "resource_type": resource, "resource_id": "*",
                     "permission": grants[user]}  # fmt: skip
            _expect(mlflow_api(url, admin, "/api/3.0/mlflow/users/permissions/grant", grant),
                    "grant", user)  # fmt: skip
    pipeline = (PIPELINE_USER, read_secret(folder, "mlflow-pipeline-password"))
    for name in registered_names:
        answer = mlflow_api(url, pipeline, "/api/2.0/mlflow/registered-models/create",
                            {"name": name})  # fmt: skip
        _expect(answer, "create registered model", name)


def _expect(answer: tuple[int, dict], action: str, what: str) -> None:
    status, doc = answer
    if status == 200 or doc.get("error_code") == "RESOURCE_ALREADY_EXISTS":
        return
    raise RuntimeError(f"MLflow {action} {what}: HTTP {status} {doc.get('message', '')}")


def registered_names() -> list[str]:
    """The registered model names of params.yaml (one per registering stage)."""
    names = []
    for section, *inner in REGISTERED_NAME_KEYS:
        values = load_params(section)
        for key in inner:
            values = values[key]
        names.append(str(values["registered_name"]))
    return names


# --------------------------------------------------------------------------- supervision


def wait_until_up(
    url: str, timeout_s: float, proc: subprocess.Popen, verify: object = True
) -> None:
    """Poll ``url`` until it answers 200; fail early when ``proc`` exited."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2, verify=verify).status_code == 200:  # type: ignore[arg-type]
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``argv`` in its own process group, output to ``log``; stopped (TERM, then KILL) on exit."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def start(args: argparse.Namespace) -> int:
    """Start the three services bound to ``args.host``, then wait until one exits or a signal."""
    signal.signal(signal.SIGTERM, _stop_on_signal)
    folder, root = secrets_dir(), project_root()
    made = ensure_secrets(folder, [args.host])
    ports = Ports(args.mlflow_port, args.prefect_port, args.dask_port)
    logs = folder / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    backend = args.backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    artifacts = args.artifacts_destination or str(root / "mlartifacts")
    mlflow_argv, mlflow_env = mlflow_command(folder, args.host, ports.mlflow, backend, artifacts)
    prefect_argv, prefect_env = prefect_command(folder, args.host, ports.prefect, root / ".prefect")
    with contextlib.ExitStack() as stack:
        mlflow = stack.enter_context(process(mlflow_argv, mlflow_env, logs / "mlflow.log"))
        prefect = stack.enter_context(process(prefect_argv, prefect_env, logs / "prefect.log"))
        dask = stack.enter_context(
            process(dask_scheduler_command(folder, args.host, ports.dask), {}, logs / "dask.log")
        )
        wait_until_up(f"http://{args.host}:{ports.mlflow}/health", 180, mlflow)
        bootstrap_mlflow(f"http://{args.host}:{ports.mlflow}", folder, registered_names())
        os.chmod(folder / "mlflow-auth.db", 0o600)  # password hashes: the owner's only
        wait_until_up(f"http://{args.host}:{ports.prefect}/api/health", 180, prefect)
        for user, name in ((PIPELINE_USER, "client.env"), (READER_USER, "reader.env")):
            write_env_file(folder / name, client_env(folder, args.host, ports, user))
        print(_started_message(folder, args.host, ports, made), flush=True)
        return _wait([mlflow, prefect, dask])


def _started_message(folder: Path, host: str, ports: Ports, made: list[str]) -> str:
    new = f" (made now: {', '.join(made)})" if made else ""
    return (
        f"services on {host}: MLflow :{ports.mlflow} (basic auth), Prefect :{ports.prefect} "
        f"(auth string), Dask tls://{host}:{ports.dask} (mutual TLS)\n"
        f"credentials in {folder}{new}\n"
        f"pipeline machines: source {folder / 'client.env'}; read-only users: "
        f"{folder / 'reader.env'}; workers: copy {folder / 'tls'} (ca.pem, dask*.pem)\n"
        "Ctrl-C stops the three services."
    )


def _wait(procs: list[subprocess.Popen]) -> int:
    """Until one service exits (1) or a signal unwinds the caller's ``with`` blocks."""
    while True:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            print(f"a service exited ({dead[0].args[:2]}): stopping the others", file=sys.stderr)
            return 1
        time.sleep(1)


def _stop_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(0)  # unwinds the with blocks: every service is stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.common.services",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("start", help="start MLflow, Prefect and a Dask scheduler, secured")
    go.add_argument("--host", default="127.0.0.1", help="address to bind and advertise")
    go.add_argument("--mlflow-port", type=int, default=Ports.mlflow)
    go.add_argument("--prefect-port", type=int, default=Ports.prefect)
    go.add_argument("--dask-port", type=int, default=Ports.dask)
    go.add_argument("--backend-store-uri", default=None, help="default: sqlite mlflow.db")
    go.add_argument("--artifacts-destination", default=None, help="default: mlartifacts/")
    init = sub.add_parser("init", help="make the credentials and certificates only")
    init.add_argument("--host", action="append", default=[], help="a name or IP for the certs")
    args = parser.parse_args(argv)
    if args.command == "init":
        made = ensure_secrets(secrets_dir(), args.host or ["127.0.0.1"])
        print(f"{secrets_dir()}: {', '.join(made) or 'nothing new'}")
        return 0
    try:
        return start(args)
    except KeyboardInterrupt:  # Ctrl-C: the services were stopped on the way out
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
