"""``mlflow models serve -m models:/ctg-distress@champion``: raw 4 Hz FHR/UC in, risk out.

The served model is a registered pyfunc (the transparent baseline of ``tests.synth_registry``,
same input and output as the trained CTG model) promoted to champion in a temporary store; the real
server runs on a free loopback port. A malformed payload must get a 4xx with a clear message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from tests.integration.services import model_server, post_json, register_champion
from tests.synth_registry import log_baseline_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    champion = register_champion(uri, lambda: log_baseline_model(str(tmp / "config.json")))
    try:
        with model_server(champion, uri, tmp / "serve.log") as url:
            yield url
    finally:
        print((tmp / "serve.log").read_text()[-3000:])


def test_champion_scores_raw_4hz_records(served: str):
    n = 20 * 60 * 4  # 20 min at 4 Hz
    normal = (140 + 3 * np.sin(np.arange(n) / 40)).round(2).tolist()
    brady = [95.0] * n
    uc = [20.0] * n
    status, body = post_json(
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
    status, body = post_json(f"{served}/invocations", payload)
    assert 400 <= status < 500, (status, body)
    assert expect in json.dumps(body), body


def test_make_serve_works_as_the_readme_writes_it(tmp_path) -> None:
    """`make serve` from a shell whose PATH lacks the venv (uvicorn not on it: the README's old
    command failed with "Return code = 127"), then the README's curl payload and a real record."""
    import os
    import shutil
    import subprocess

    from tests.conftest import ROOT
    from tests.integration.services import free_port, stop, wait_http

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_champion(uri, lambda: log_baseline_model(str(tmp_path / "config.json")))
    port = free_port()
    venv_bin = os.path.dirname(os.sys.executable)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri}
    env.pop("VIRTUAL_ENV", None)
    log = tmp_path / "make-serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            ["make", "-s", "serve", f"SERVE_PORT={port}"],
            cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", 180, proc)
        # the README's curl payload, as written (this test champion has no minimum length)
        readme = {"dataframe_records": [{"fhr_bpm": [140.0, 141.0], "uc": [12.0, 13.0]}]}
        status, body = post_json(f"{url}/invocations", readme)
        assert status == 200 and set(body["predictions"][0]) == {"probability", "alert"}, body
        n = 20 * 60 * 4
        record = {"dataframe_records": [{"fhr_bpm": [140.0] * n, "uc": [20.0] * n}]}
        status, body = post_json(f"{url}/invocations", record)
        assert status == 200 and len(body["predictions"]) == 1, (status, body)
    finally:
        stop(proc)
        print(log.read_text()[-2000:])
