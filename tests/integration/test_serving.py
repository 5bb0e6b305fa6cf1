"""``fetal serve`` (``make serve``): the champion over HTTP behind a token and a body-size cap.

The served model is a registered pyfunc (the transparent baseline of ``tests.synth_registry``, same
input and output as the trained CTG model) promoted to champion in a temporary store; the real
server (``fetal serve``, uvicorn) runs on a free loopback port. A caller without the token gets
401, a body over ``serve.max_body_kb`` 413, and a malformed payload 400 naming the field and the
reason: no stack trace, no server path, no piece of the body. (``mlflow models serve``, which
``make serve`` ran before, answered the same payloads with its stack trace and paths.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, shared_mirror
from tests.integration.services import (
    BIN,
    SERVE_TOKEN,
    fetal_server,
    free_port,
    post_json,
    register_champion,
    stop,
    wait_http,
)
from tests.synth_registry import log_baseline_model

pytestmark = pytest.mark.integration

MARKER = "SECRET-BODY-MARKER-7f3a"  # must never come back in an answer
N_20_MIN = 20 * 60 * 4


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    champion = register_champion(uri, lambda: log_baseline_model(str(tmp / "config.json")))
    try:
        with fetal_server(champion, uri, tmp / "serve.log") as url:
            yield url
    finally:
        print((tmp / "serve.log").read_text()[-3000:])


def test_champion_scores_raw_4hz_records(served: str):
    normal = (140 + 3 * np.sin(np.arange(N_20_MIN) / 40)).round(2).tolist()
    brady = [95.0] * N_20_MIN
    uc = [20.0] * N_20_MIN
    payload = {"dataframe_records": [{"fhr_bpm": normal, "uc": uc}, {"fhr_bpm": brady, "uc": uc}]}
    status, body = post_json(f"{served}/invocations", payload, token=SERVE_TOKEN)
    assert status == 200, body
    preds = body["predictions"]
    assert len(preds) == 2
    assert preds[0]["probability"] < 0.1 and preds[0]["alert"] is False
    assert preds[1]["probability"] > 0.9 and preds[1]["alert"] is True
    split = {"dataframe_split": {"columns": ["fhr_bpm", "uc"], "data": [[brady, uc]]}}
    status, body = post_json(f"{served}/invocations", split, token=SERVE_TOKEN)
    assert status == 200 and body["predictions"][0]["probability"] > 0.9, body


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789", SERVE_TOKEN + "x"])
def test_a_caller_without_the_token_gets_401(served: str, token: str | None):
    payload = {"dataframe_records": [{"fhr_bpm": [140.0] * 8, "uc": [10.0] * 8}]}
    status, body = post_json(f"{served}/invocations", payload, token=token)
    assert status == 401 and body["field"] == "Authorization", body


def test_a_body_over_the_cap_gets_413_declared_or_streamed(served: str):
    import http.client

    big = json.dumps({"dataframe_records": [{"fhr_bpm": [140.0] * 400_000,
                                             "uc": [1.0] * 400_000}]}).encode()  # fmt: skip
    assert len(big) > 2048 * 1024  # serve.max_body_kb
    status, body = post_json(f"{served}/invocations", big, token=SERVE_TOKEN)
    assert status == 413 and "at most 2097152" in body["message"], body
    host, port = served.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
    conn.request("POST", "/invocations", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json",
                          "Authorization": f"Bearer {SERVE_TOKEN}"})  # fmt: skip
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()[:300]


def _records(**fields: object) -> dict:
    return {"dataframe_records": [{"fhr_bpm": [140.0] * 8, "uc": [10.0] * 8, **fields}]}


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        ({"dataframe_records": [{"fhr_bpm": [140.0] * 8}]}, "dataframe_records[0].uc",
         "missing"),
        (_records(fhr_bpm=MARKER), "dataframe_records[0].fhr_bpm", "must be a list of numbers"),
        (_records(fhr_bpm=[140.0, MARKER]), "dataframe_records[0].fhr_bpm", "non-numeric"),
        (_records(uc=[[1.0], [2.0]]), "dataframe_records[0].uc", "not a flat list"),
        (_records(**{MARKER: [1.0]}), "dataframe_records[0].<field>", "not an input"),
        ({"records": [MARKER]}, "body", "exactly one of"),
        ({"dataframe_split": {"columns": ["fhr_bpm", "uc"], "data": [[[1.0]]]}},
         "dataframe_split.data[0]", "length differs"),
        (f"not json {MARKER}".encode(), "body", "not valid JSON"),
        (b"", "body", "empty"),
        (b'{"dataframe_records": [{"fhr_bpm": [140.0, NaN], "uc": [1.0, 2.0]}]}',
         "dataframe_records[0].fhr_bpm", "holds NaN"),
    ],
)  # fmt: skip
def test_a_bad_body_gets_400_naming_the_field_and_reason_only(served, payload, field, reason):
    """No stack trace, no server path, no piece of the body (the marker) in the answer."""
    status, body = post_json(f"{served}/invocations", payload, token=SERVE_TOKEN)
    text = json.dumps(body)
    assert status == 400, (status, body)
    assert body["field"] == field and reason in body["message"], body
    assert body["message"].startswith(f"{field}: ")
    assert "Traceback" not in text and "stack_trace" not in text and ".py" not in text
    assert str(ROOT) not in text and "/site-packages" not in text and MARKER not in text
    assert set(body) == {"error_code", "field", "message"}


def test_another_content_type_gets_415(served: str):
    status, body = post_json(f"{served}/invocations", b"fhr_bpm,uc\n1,2\n",
                             content_type="text/csv", token=SERVE_TOKEN)  # fmt: skip
    assert status == 415 and body["field"] == "Content-Type", body


def test_only_a_registered_model_is_served(tmp_path):
    """A run's artifacts (``runs:/``) or a path cannot be served: the server refuses to start."""
    proc = subprocess.run(
        [str(shutil.which("fetal") or os.path.join(os.path.dirname(os.sys.executable), "fetal")),
         "serve", "--model", "runs:/0123/model", "--port", str(free_port())],
        env={**os.environ, "FETAL_SERVE_TOKEN": SERVE_TOKEN, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "only a registered model" in proc.stderr, proc.stderr


def mirror_trained_logistic(folder: Path, n_records: int = 24) -> Path:
    """The ``logistic`` family as ``train_families_ctg`` saves it, fitted on the FIGO features of
    the mirror's first ``n_records`` CTU-UHB records (pH < ``preprocess_ctg.ph_threshold``),
    with params.yaml's real input limits (``ctg_signal``): a tiny real-mirror champion."""
    from dataclasses import asdict

    from stages.common.ml.metrics import youden_threshold
    from stages.common.settings import load_settings
    from stages.ctg.features.figo import FeaturizeCtg, record_features
    from stages.ctg.models.families import logistic_pipeline
    from stages.ctg.models.family_predictor import export_linear, save_family_dir
    from stages.ctg.signal.cleaning import CleaningParams
    from stages.ctg.signal.settings import CtgSignal, PreprocessCtg
    from stages.ctg.signal.wfdb_record import read_ctg_record

    mirror = shared_mirror("ctu-uhb")
    signal, pre = (
        load_settings(CtgSignal, "ctg_signal"),
        load_settings(PreprocessCtg, "preprocess_ctg"),
    )
    window_min = load_settings(FeaturizeCtg, "featurize_ctg").window_min
    names = (mirror / "RECORDS").read_text().split()[:n_records]
    records = [read_ctg_record(mirror / n) for n in names]
    cleaning = CleaningParams.from_settings(pre)
    feats = [record_features(r.fhr_bpm, r.uc, r.fs_hz, window_min, cleaning) for r in records]
    columns = sorted(feats[0])
    x = np.array([[f[c] for c in columns] for f in feats], dtype=float)
    y = np.array([r.ph < pre.ph_threshold for r in records], dtype=int)
    assert 0 < y.sum() < len(y)
    fitted = logistic_pipeline(1.0, 0).fit(x, y)
    scorer, _ = export_linear(fitted)
    config = {"family": "logistic", "columns": columns, "window_min": window_min,
              "ctg_signal": asdict(signal), "preprocess_ctg": asdict(pre), "scorer": scorer,
              "alert_threshold": youden_threshold(y, fitted.predict_proba(x)[:, 1]),
              "threshold_rule": "youden on the training records (a test model)"}  # fmt: skip
    save_family_dir(folder, config)
    return folder


def log_family_model(model_dir: Path) -> str:
    """Log a family folder as ``register_ctg`` does (loader, signature); its model URI."""
    from stages.common.registry import tracking
    from stages.ctg.models.registration import FAMILY_LOADER, SIGNATURE, example_input

    return tracking.log_predictor_model("model", FAMILY_LOADER, {"model_dir": model_dir},
                                        pip_requirements=["numpy", "pandas", "scipy"],
                                        input_example=example_input(),
                                        signature=tracking.model_signature(SIGNATURE))  # fmt: skip


def readme_serving_lines() -> tuple[list[str], str]:
    """The README's ``fetal payload-ctg`` command (words) and its ``curl`` line, as written."""
    from tests.doc_check import documented_commands, shell_lines

    payload = next(c for c in documented_commands() if c[:2] == ["fetal", "payload-ctg"])
    curl = next(line for _, line in shell_lines((ROOT / "README.md").read_text())
                if line.startswith("curl ") and "/invocations" in line)  # fmt: skip
    return payload, curl


@pytest.mark.mirror
def test_make_serve_works_as_the_readme_writes_it(tmp_path) -> None:
    """The README's serving example as written, against a champion trained on real CTU-UHB
    records with the real input limits: `make serve` from a shell whose PATH lacks the venv, the
    token in FETAL_SERVE_TOKEN, the payload made by `fetal payload-ctg` from a mirror record,
    the README's curl line; a probability comes back. A 2-sample record gets 400 (the real
    minimum length), unlike the toy champion of the other tests."""
    if shutil.which("make") is None or shutil.which("curl") is None:
        pytest.skip("make or curl is not installed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model_dir = mirror_trained_logistic(tmp_path / "logistic")
    register_champion(uri, lambda: log_family_model(model_dir))
    payload_argv, curl = readme_serving_lines()
    record = shared_mirror("ctu-uhb") / Path(payload_argv[2]).name
    payload_argv[payload_argv.index("--out") + 1] = str(tmp_path / "payload.json")
    made = subprocess.run(
        [str(BIN / "fetal"), "payload-ctg", str(record), *payload_argv[3:]],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    port = free_port()
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != str(BIN))
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, "FETAL_SERVE_TOKEN": SERVE_TOKEN}
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
        line = curl.replace("127.0.0.1:5001", f"127.0.0.1:{port}")
        sent = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        answer = json.loads(sent.stdout)
        prediction = answer["predictions"][0]
        assert 0.0 <= prediction["probability"] <= 1.0 and isinstance(prediction["alert"], bool)
        short = {"dataframe_records": [{"fhr_bpm": [140.0, 141.0], "uc": [12.0, 13.0]}]}
        status, body = post_json(f"{url}/invocations", short, token=SERVE_TOKEN)
        assert status == 400 and "at least 10 min" in body["message"], body
    finally:
        stop(proc)
        print(log.read_text()[-2000:])
