"""``make services``: MLflow, Prefect and a Dask scheduler on real ports, each behind its tool's
own authentication, credentials made on first start.

One start per module (``make services`` on free loopback ports, a temporary project root and
secrets folder): a caller without credentials gets 401 from MLflow and from the Prefect API; the
read-only MLflow user reads the registry but cannot move ``champion`` (403); a flow run with
``client.env``'s auth string completes, and the same flow without it fails; the credential files
are 0600 in a 0700 folder, made once, and git ignores the folder.
"""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from stages.common import services
from tests.conftest import ROOT
from tests.integration.services import BIN, free_port, prefect_api_post, stop

pytestmark = pytest.mark.integration

TINY_FLOW = """
from prefect import flow

@flow(name="tiny-authenticated")
def tiny() -> int:
    return 42

assert tiny() == 42
"""


def read_env_file(path: Path) -> dict[str, str]:
    """``export NAME='value'`` lines as a dict (the files ``make services`` writes)."""
    out = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        out[name] = value.strip("'")
    return out


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | dict]]:
    """``make services`` (or the command it runs) until the module ends."""
    base = tmp_path_factory.mktemp("services")
    project, secrets = base / "project", base / "secrets"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    ports = {"MLFLOW_PORT": free_port(), "PREFECT_PORT": free_port(), "DASK_PORT": free_port()}
    env = {**os.environ, "FETAL_PROJECT_ROOT": str(project), "FETAL_SECRETS_DIR": str(secrets),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    if shutil.which("make"):
        argv = ["make", "-s", "services", "SERVICES_HOST=127.0.0.1",
                *(f"{k}={v}" for k, v in ports.items())]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "stages.common.services", "start", "--host", "127.0.0.1",
                "--mlflow-port", str(ports["MLFLOW_PORT"]),
                "--prefect-port", str(ports["PREFECT_PORT"]),
                "--dask-port", str(ports["DASK_PORT"])]  # fmt: skip
    log = base / "services.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield {"secrets": secrets, "project": project, "log": log,
               "client": read_env_file(secrets / "client.env"),
               "reader": read_env_file(secrets / "reader.env")}  # fmt: skip
    finally:
        stop(proc, timeout_s=90)  # the supervisor stops its three services first
        print(log.read_text()[-3000:])


def test_credentials_are_made_once_0600_in_a_0700_folder_git_ignores(started) -> None:
    secrets: Path = started["secrets"]
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    files = [p for p in secrets.rglob("*") if p.is_file() and "logs" not in p.parts]
    assert {"mlflow-admin-password", "prefect-auth-password", "serve-token", "client.env",
            "reader.env", "ca.pem", "dask-key.pem"} <= {p.name for p in files}  # fmt: skip
    loose = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != 0o600}  # fmt: skip
    assert loose == {}, loose
    before = {p: p.read_bytes() for p in files if p.suffix != ".db"}
    made = services.ensure_secrets(secrets, ["127.0.0.1"])  # a second start: nothing replaced
    assert made == [] and all(p.read_bytes() == b for p, b in before.items())
    ignored = subprocess.run(["git", "check-ignore", "-q", ".secrets/serve-token"], cwd=ROOT)
    assert ignored.returncode == 0, "git must ignore .secrets/"
    admin = (secrets / "mlflow-admin-password").read_text()
    assert len(admin) >= 32 and admin not in started["log"].read_text()


def test_mlflow_refuses_a_caller_without_valid_credentials(started) -> None:
    url = started["client"]["MLFLOW_TRACKING_URI"]
    search = f"{url}/api/2.0/mlflow/registered-models/search"
    assert requests.get(search, timeout=30).status_code == 401
    assert requests.get(search, auth=("admin", "password1234"), timeout=30).status_code == 401
    client = started["client"]
    auth = (client["MLFLOW_TRACKING_USERNAME"], client["MLFLOW_TRACKING_PASSWORD"])
    answer = requests.get(search, auth=auth, timeout=30)
    assert answer.status_code == 200
    assert "ctg-distress" in {m["name"] for m in answer.json()["registered_models"]}


def test_the_reader_compares_versions_but_cannot_move_champion(
    started, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline user registers and promotes through ``tracking`` (artifacts through the
    server); the reader of ``reader.env`` sees the champion and gets 403 moving it."""
    from stages.common.registry import tracking
    from tests.integration.services import register_champion
    from tests.synth_registry import log_baseline_model

    client, reader = started["client"], started["reader"]
    url = client["MLFLOW_TRACKING_URI"]
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, client[name])
    register_champion(url, lambda: log_baseline_model(str(tmp_path / "config.json")))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, reader[name])
    assert tracking.alias_version("ctg-distress", tracking.CHAMPION) == "1"
    with pytest.raises(Exception, match="403|PERMISSION_DENIED|Permission denied"):
        tracking.set_alias("ctg-distress", tracking.CHAMPION, "1")
    auth = (reader["MLFLOW_TRACKING_USERNAME"], reader["MLFLOW_TRACKING_PASSWORD"])
    moved = requests.post(
        f"{url}/api/2.0/mlflow/registered-models/alias",
        auth=auth,
        timeout=30,
        json={"name": "ctg-distress", "alias": "champion", "version": "1"},
    )
    assert moved.status_code == 403
    made = requests.post(
        f"{url}/api/2.0/mlflow/registered-models/create",
        auth=auth,
        timeout=30,
        json={"name": "ctg-distress"},
    )  # taken by the pipeline user
    assert made.status_code != 200


def test_prefect_refuses_a_caller_without_the_auth_string(started) -> None:
    api = started["client"]["PREFECT_API_URL"]
    assert requests.get(f"{api}/health", timeout=30).status_code == 200  # probes stay open
    assert requests.post(f"{api}/flows/filter", json={}, timeout=30).status_code == 401
    wrong = base64.b64encode(b"fetal:wrong").decode()
    headers = {"Authorization": f"Basic {wrong}"}
    assert (
        requests.post(f"{api}/flows/filter", json={}, headers=headers, timeout=30).status_code
        == 401
    )


def test_an_authenticated_flow_run_completes_and_one_without_the_string_fails(started) -> None:
    client = started["client"]
    env = {**os.environ, **client, "PREFECT_HOME": str(started["project"] / ".prefect-client"),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    ok = subprocess.run([str(BIN / "python"), "-c", TINY_FLOW], env=env, capture_output=True,
                        text=True, timeout=180)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-2000:]
    env.pop("PREFECT_API_AUTH_STRING")
    refused = subprocess.run([str(BIN / "python"), "-c", TINY_FLOW], env=env,
                             capture_output=True, text=True, timeout=180)  # fmt: skip
    assert refused.returncode != 0 and "401" in refused.stderr, refused.stderr[-2000:]
    runs = prefect_api_post(
        client, "/flow_runs/filter", {"flows": {"name": {"any_": ["tiny-authenticated"]}}}
    )
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"], runs
