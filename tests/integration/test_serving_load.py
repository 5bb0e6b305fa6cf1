"""The served CTG model under a small concurrent load with bad payloads interleaved.

The real ``CtgPredictor`` pyfunc (a small network fitted briefly on synthetic records, logged as
``train_ctg`` logs it) is champion in a temporary store and served by ``fetal serve`` (``make
serve``: a Bearer token, ``serve.max_body_kb``) on a free loopback port. Good requests must all
succeed while NaN, infinity, strings, a 10-hour record, a 5 MB body and an empty body each get a
4xx naming the problem (the 5 MB body a 413, before it is parsed); every JSON payload format
must give the same probability. The load and payloads are ``bench.serving``'s own; the token is
added to its requests.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from bench.serving import (
    CONTENT_TYPES,
    GOOD,
    JSON,
    PAYLOADS,
    bad_payloads,
    good_payload,
    log_ctg_model,
    run_load,
    schedule,
    synthetic_model_dir,
)
from tests.integration.services import SERVE_TOKEN, fetal_server, post_json, register_champion
from tests.synth_ctg import synth_record

pytestmark = pytest.mark.integration

SMALL_NET = {"units": 8, "dense_units": 4, "conv_filters": 8}
JSON_PAYLOADS = ("records", "split", "inputs", "compact")  # the formats fetal serve reads
EXPECTED = {  # bad kind -> words of its 4xx message
    "NaN values": "holds NaN",
    "infinity": "holds infinite",
    "strings": "non-numeric",
    "10-hour record": "at most 180 min",
    "5 MB body": "at most 2097152",
    "empty body": "body: empty",
}


@pytest.fixture(scope="module")
def record() -> tuple[np.ndarray, np.ndarray]:
    fhr, uc, _ = synth_record(np.random.default_rng(4), acidemic=False, duration_min=90.0)
    return fhr, uc


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("serving_load")
    model_dir = synthetic_model_dir(tmp / "ctg", n_records=8, overrides=SMALL_NET)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    champion = register_champion(uri, lambda: log_ctg_model(model_dir))
    try:
        with fetal_server(champion, uri, tmp / "serve.log") as url:
            yield url
    finally:
        print((tmp / "serve.log").read_text()[-3000:])


@pytest.fixture
def with_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench.serving.run_load``'s connections send the serving token (it sends none)."""
    import http.client

    class TokenConnection(http.client.HTTPConnection):
        def request(self, method, url, body=None, headers=None, **kw):  # noqa: ANN001, ANN201
            headers = {**(headers or {}), "Authorization": f"Bearer {SERVE_TOKEN}"}
            return super().request(method, url, body=body, headers=headers, **kw)

    monkeypatch.setattr(http.client, "HTTPConnection", TokenConnection)


def test_bad_payloads_get_4xx_and_leave_concurrent_good_requests_alone(
    served: str, record, with_token: None
):
    bad = bad_payloads(*record)
    assert set(bad) == set(EXPECTED)
    kinds = schedule(72, list(bad), bad_every=6)  # 60 good, each bad kind twice
    outcomes, _ = run_load(served, {GOOD: good_payload(*record, "records"), **bad}, kinds, 4, 300)
    assert len(outcomes) == len(kinds)
    good = [o for o in outcomes if o.kind == GOOD]
    assert len(good) == 60 and all(o.status == 200 for o in good), [o for o in good][:3]
    for o in outcomes:
        if o.kind != GOOD:
            assert 400 <= o.status < 500, o
            assert EXPECTED[o.kind] in o.message, o
            assert (o.status == 413) == (o.kind == "5 MB body"), o


def test_every_json_payload_format_gives_the_same_probability(served: str, record):
    """``dataframe_records``, ``dataframe_split``, ``inputs`` and the compact base64 form (an
    ``inputs`` body) agree; parquet (not parsed by the hardened endpoint) is refused by name."""
    probs = {}
    for payload in PAYLOADS:
        content_type = CONTENT_TYPES.get(payload, JSON)
        body = good_payload(*record, payload)
        status, answer = post_json(
            f"{served}/invocations", body, content_type=content_type, token=SERVE_TOKEN
        )
        if payload in JSON_PAYLOADS:
            assert status == 200, (payload, answer)
            probs[payload] = answer["predictions"][0]["probability"]
        else:
            assert status == 415 and answer["field"] == "Content-Type", (payload, answer)
    assert set(probs) == set(JSON_PAYLOADS) and np.ptp(list(probs.values())) < 1e-6, probs
