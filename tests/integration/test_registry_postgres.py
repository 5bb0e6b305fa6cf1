"""Registry rules against two stores: sqlite (no server, fcntl lock beside the store) and an MLflow
tracking server backed by PostgreSQL (the "beyond one machine" setup: advisory lock in that
database via ``FETAL_REGISTRY_LOCK_URI``; the server comes from ``.ci/services.sh``).

The same scenario runs on both: the first version becomes champion, one better by less than the
margin is not promoted, re-registering the same key returns the same version, two processes
registering at once neither lose nor duplicate a version, and two processes deciding at once
leave one champion (the best) with every move in the history, in order, none overwritten.
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

from stages.common.registry import champion, tracking
from tests.integration.services import create_database, mlflow_server, require_env
from tests.synth_registry import log_baseline_model, oof_evaluation

pytestmark = pytest.mark.integration

REGISTER_SCRIPT = """
import json, sys, time
from stages.common.registry import tracking
uri, name, key, start = sys.argv[1:5]
while time.time() < float(start):  # both processes register at the same moment
    time.sleep(0.01)
print(json.dumps(tracking.register_model(uri, name, {"eval_data_hash": "h"}, key)))
"""

DECIDE_SCRIPT = """
import json, os, sys, time
from stages.common.registry import champion, promotion
name, version, role, marker = sys.argv[1:5]
decide = promotion.decide

def slow(*args, **kwargs):  # the first decider says it is deciding, then takes its time
    open(marker, "w").close()
    time.sleep(5)
    return decide(*args, **kwargs)

if role == "first":
    promotion.decide = slow
else:  # the second starts while the first is deciding (it has read the champion already)
    while not os.path.exists(marker):
        time.sleep(0.05)
print(json.dumps(champion.promote_version(name, version, 0.005, f"decider {version}").to_dict()))
"""


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """MLFLOW_TRACKING_URI for the backend under test (set in this process and children)."""
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.delenv("FETAL_REGISTRY_LOCK_URI", raising=False)
        yield uri
        return
    admin = require_env("FETAL_TEST_POSTGRES_URI", "PostgreSQL")
    db_uri = create_database(admin, "mlflow_test")
    with mlflow_server(db_uri, tmp_path / "artifacts", tmp_path / "mlflow-server.log") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        monkeypatch.setenv("FETAL_REGISTRY_LOCK_URI", db_uri)  # the lock every worker shares
        yield url


def _at_once(script: str, jobs: list[list[str]]) -> list[object]:
    """Run ``script`` with each job's arguments in its own process; their JSON answers."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for args in jobs
    ]  # fmt: skip
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_registry_promotion_idempotence_and_concurrency(store: str, tmp_path: Path):
    name = f"reg-{uuid.uuid4().hex[:6]}"
    with tracking.run("registry-test", "baseline"):
        uri = log_baseline_model(str(tmp_path / "config.json"))

    def version(key: str, auc: float) -> str:
        v = tracking.register_model(uri, name, {"eval_data_hash": "h"}, key)
        tracking.record_evaluation(name, v, oof_evaluation(auc))
        return v

    v1 = version("k1", 0.70)
    assert tracking.alias_version(name, "challenger") == v1
    assert champion.promote_version(name, v1, 0.005, "test").promoted
    v2 = version("k2", 0.703)  # +0.003 < margin
    d = champion.promote_version(name, v2, 0.005, "test")
    assert not d.promoted and d.n == 400 and tracking.alias_version(name, "champion") == v1
    assert version("k2", 0.703) == v2  # the same key again: the same version
    # a challenger without a per-item evaluation cannot be paired: the champion stays
    v3 = tracking.register_model(uri, name, {"eval_data_hash": "other"}, "k3")
    assert "cannot pair" in champion.promote_version(name, v3, 0.005, "test").reason

    # two processes register at once: same key -> one version; different keys -> distinct ones
    start = str(time.time() + 8)  # after both interpreters have imported mlflow
    got = _at_once(REGISTER_SCRIPT, [[uri, name, k, start] for k in ("k5", "k5", "k6")])
    assert got[0] == got[1] and got[0] != got[2], got
    keys = [r["idempotency_key"] for r in tracking.compare_versions(name)]
    assert sorted(keys) == ["k1", "k2", "k3", "k5", "k6"], keys

    # two processes decide at once: the first (AUC 0.80) is mid-decision when the second (0.90)
    # starts; the second must decide against the first's result, not against the stale v1
    first, second = str(got[0]), str(got[2])
    for v, auc in ((first, 0.80), (second, 0.90)):
        tracking.record_evaluation(name, v, oof_evaluation(auc))
    marker = str(tmp_path / "first-is-deciding")
    decisions = _at_once(
        DECIDE_SCRIPT, [[name, first, "first", marker], [name, second, "second", marker]]
    )
    assert [d["promoted"] for d in decisions] == [True, True], decisions
    assert decisions[1]["champion_version"] == first  # re-read under the lock
    assert tracking.alias_version(name, "champion") == second  # one champion: the best
    moves = [(e["seq"], e["from"], e["to"]) for e in champion.champion_history(name)]
    assert moves == [(1, None, v1), (2, v1, first), (3, first, second)], moves
    assert tracking.load_model(tracking.champion_uri(name)) is not None  # verified, loads
