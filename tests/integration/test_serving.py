"""``mlflow models serve -m models:/ctg-distress@champion``: raw 4 Hz FHR/UC in, risk out.

The served model is a registered pyfunc (the transparent baseline from ``flows.tasks``, same
input and output as the trained CTG model) promoted to champion in a temporary store; the real
server runs on a free loopback port. A malformed payload must get a 4xx with a clear message.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from flows.tasks import log_baseline_model
from stages.common import tracking
from tests.conftest import ROOT
from tests.integration.services import BIN, free_port, stop, wait_http

pytestmark = pytest.mark.integration


def _post(url: str, payload: object) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # module-scoped: the autouse fixture is per test
    try:
        with tracking.run("serving-test", "baseline"):
            model_uri = log_baseline_model(str(tmp / "config.json"))
        v = tracking.register_model(model_uri, "ctg-distress", {"cv_auc": 0.6}, "serve")
        tracking.promote_if_better("ctg-distress", v, "cv_auc", 0.005)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    port = free_port()
    # the scoring server is `uvicorn` from the venv; flows.tasks (the loader) from the repo
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT), "PATH": path}
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/ctg-distress@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(tmp / "serve.log", "w"), stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", 120, proc)
        yield url
    finally:
        stop(proc)
        print((tmp / "serve.log").read_text()[-3000:])


def test_champion_scores_raw_4hz_records(served: str):
    n = 20 * 60 * 4  # 20 min at 4 Hz
    normal = (140 + 3 * np.sin(np.arange(n) / 40)).round(2).tolist()
    brady = [95.0] * n
    uc = [20.0] * n
    status, body = _post(
        f"{served}/invocations",
        {"dataframe_records": [{"fhr_bpm": normal, "uc": uc}, {"fhr_bpm": brady, "uc": uc}]},
    )
    assert status == 200, body
    preds = body["predictions"]
    assert len(preds) == 2
    assert preds[0]["probability"] < 0.1 and preds[0]["alert"] is False
    assert preds[1]["probability"] > 0.9 and preds[1]["alert"] is True


@pytest.mark.parametrize(
    ("payload", "expect"),
    [
        ({"dataframe_records": [{"fhr_bpm": [140.0] * 8}]}, "uc"),  # a channel is missing
        ({"dataframe_records": [{"fhr_bpm": "fast", "uc": [1.0]}]}, "fhr_bpm"),  # not a list
        ({"records": [1, 2, 3]}, "dataframe"),  # not a pyfunc payload at all
    ],
)
def test_malformed_payload_gets_4xx_with_a_clear_message(served: str, payload, expect: str):
    status, body = _post(f"{served}/invocations", payload)
    assert 400 <= status < 500, (status, body)
    assert expect in json.dumps(body), body
