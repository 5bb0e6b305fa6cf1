"""Registry and promotion rules against two stores: sqlite (no server) and an MLflow tracking
server backed by PostgreSQL (the "beyond one machine" setup; the server comes from
``.ci/services.sh``).

The same scenario runs on both: first version becomes champion; a challenger better by less
than the margin is not promoted, one better by more is; re-registering the same inputs returns
the same version; two processes registering at once neither lose nor duplicate a version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stages.common.registry import tracking
from tests.integration.services import create_database, mlflow_server, require_env
from tests.synth_registry import oof_evaluation

pytestmark = pytest.mark.integration

REGISTER_SCRIPT = """
import json, sys, time
from stages.common.registry import tracking
uri, name, key, score, start = sys.argv[1:6]
while time.time() < float(start):  # both processes register at the same moment
    time.sleep(0.01)
print(json.dumps(tracking.register_model(uri, name, {"cv_auc": score, "eval_data_hash": "h"}, key)))
"""


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLFLOW_TRACKING_URI for the backend under test (set in this process and children)."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri
        return
    admin = require_env("FETAL_TEST_POSTGRES_URI", "PostgreSQL")
    db_uri = create_database(admin, "mlflow_test")
    with mlflow_server(db_uri, tmp_path / "artifacts", tmp_path / "mlflow-server.log") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        yield url


def _model_uri(tmp_path: Path) -> str:
    from flows.tasks import log_baseline_model

    with tracking.run("registry-test", "baseline"):
        return log_baseline_model(str(tmp_path / "config.json"))


def _register(uri: str, name: str, score: float, key: str) -> str:
    return tracking.register_model(uri, name, {"cv_auc": score, "eval_data_hash": "h"}, key)


def test_registry_promotion_idempotence_and_concurrency(store: str, tmp_path: Path):
    name = f"reg-{uuid.uuid4().hex[:6]}"
    uri = _model_uri(tmp_path)

    v1 = _register(uri, name, 0.70, "k1")
    assert tracking.alias_version(name, "challenger") == v1
    d = tracking.promote_if_better(name, v1, "cv_auc", 0.005, oof_evaluation(0.70))
    assert d.promoted and tracking.alias_version(name, "champion") == v1

    v2 = _register(uri, name, 0.703, "k2")  # +0.003 < margin
    d = tracking.promote_if_better(name, v2, "cv_auc", 0.005, oof_evaluation(0.703))
    assert not d.promoted and d.n == 400
    assert tracking.alias_version(name, "champion") == v1
    assert tracking.alias_version(name, "challenger") == v2

    v3 = _register(uri, name, 0.75, "k3")  # +0.05 > margin
    assert tracking.promote_if_better(name, v3, "cv_auc", 0.005, oof_evaluation(0.85)).promoted
    assert tracking.alias_version(name, "champion") == v3

    # idempotent: the same inputs (key) again -> the same version, nothing added
    assert _register(uri, name, 0.75, "k3") == v3
    assert len(tracking.compare_versions(name)) == 3

    # a challenger without a per-item evaluation cannot be paired: the champion stays
    v4 = tracking.register_model(uri, name, {"cv_auc": 0.9, "eval_data_hash": "other"}, "k4")
    d = tracking.promote_if_better(name, v4, "cv_auc", 0.005)
    assert not d.promoted and "cannot pair" in d.reason

    # two processes at once: same key -> one version; different keys -> two distinct versions
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    start = time.time() + 6  # after both interpreters have imported mlflow
    jobs = [("k5", 0.71), ("k5", 0.71), ("k6", 0.72), ("k7", 0.73)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REGISTER_SCRIPT, uri, name, key, str(score), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for key, score in jobs
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert got[0] == got[1], got  # same inputs: same version for both racers
    assert len({got[0], got[2], got[3]}) == 3, got
    rows = tracking.compare_versions(name)
    keys = [r["idempotency_key"] for r in rows]
    assert sorted(keys) == sorted({"k1", "k2", "k3", "k4", "k5", "k6", "k7"}), keys
    assert tracking.alias_version(name, "champion") == v3  # registration never moves champion
    # every surviving version still loads as a model
    assert tracking.load_model(f"models:/{name}/{got[0]}") is not None
