"""Faults: a killed training run, overlapping runs, and services that are down.

Each must end in a clear state: the rerun completes without duplicate versions, an overlapping
run waits, a dead Prefect server or MLflow store fails fast with a message naming it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from flows import registry, training
from stages.common.registry import tracking
from tests.conftest import ROOT, run_dvc, set_params
from tests.integration.services import free_port
from tests.integration.toy_pipeline import install_toy_pipeline

pytestmark = pytest.mark.integration


def test_killed_training_run_reruns_cleanly_without_duplicate_versions(
    toy_repo: Path, tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
):
    install_toy_pipeline(toy_repo, remote=tmp_path / "remote")
    # register_ctg registers its model, then is killed before writing its report
    set_params(toy_repo, {"register_ctg": {"sleep_after_register_s": 120}})
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.training", "--repo", str(toy_repo), "--retries", "0"],
        cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and tracking.alias_version("toy-ctg", "challenger") is None:
        assert proc.poll() is None, "the flow ended before it could be killed"
        time.sleep(1)
    assert tracking.alias_version("toy-ctg", "challenger") == "1", "never reached registration"
    os.killpg(proc.pid, signal.SIGKILL)  # the flow, dvc and the stage, mid-stage
    proc.wait(30)
    assert not (toy_repo / "data/reports/register_ctg.json").exists()

    set_params(toy_repo, {"register_ctg": {"sleep_after_register_s": 0}})
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(toy_repo))  # the flow's own project
    out = training.training_flow(repo=str(toy_repo), retries=0)
    assert "register_ctg" in {s["stage"] for s in out["stages"] if s["ran"]}
    versions = tracking.compare_versions("toy-ctg")
    assert [v["version"] for v in versions] == [1]  # the rerun reused v1: no duplicate
    assert tracking.alias_version("toy-ctg", "champion") == "1"
    report = yaml.safe_load((toy_repo / "data/reports/register_ctg.json").read_text())
    assert report["models"][0]["version"] == "1"
    status = run_dvc(toy_repo, "status", "prep_ctg", "train_ctg", "evaluate_ctg").stdout
    assert "up to date" in status, status


def test_second_run_in_the_same_workspace_waits_with_a_clear_log(tmp_path: Path, caplog):
    (tmp_path / ".dvc").mkdir()
    log = logging.getLogger("test-lock")
    order: list[str] = []
    with training.workspace_lock(tmp_path, log):
        t = threading.Thread(target=lambda: _second(tmp_path, log, order))
        with caplog.at_level(logging.WARNING, logger="test-lock"):
            t.start()
            time.sleep(0.5)
            order.append("first done")
    t.join(10)
    assert order == ["first done", "second ran"]
    assert "another training run holds" in caplog.text


def _second(repo: Path, log: logging.Logger, order: list[str]) -> None:
    with training.workspace_lock(repo, log):
        order.append("second ran")


def test_prefect_server_down_fails_fast_and_clearly(tmp_path: Path):
    port = free_port()  # nothing listens there
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.training", "--repo", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"127.0.0.1:{port}" in proc.stderr and "unreachable" in proc.stderr
    assert time.monotonic() - start < 60


def test_mlflow_unreachable_fails_after_its_retries_with_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys
):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    start = time.monotonic()
    with pytest.raises(Exception, match="127.0.0.1") as err:
        tracking.register_model("runs:/0/model", "x", {"cv_auc": 0.5}, "k")
    assert "Connection refused" in str(err.value) or "Max retries" in str(err.value)
    assert registry.main(["x"]) == 1
    assert url in capsys.readouterr().err
    assert time.monotonic() - start < 60
