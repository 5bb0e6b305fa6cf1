"""The served CTG model under a small concurrent load with bad payloads interleaved.

The real ``CtgPredictor`` pyfunc (a small network fitted briefly on synthetic records, logged as
``train_ctg`` logs it) is champion in a temporary store and served by ``mlflow models serve`` on
a free loopback port. Good requests must all succeed while NaN, infinity, strings, a 10-hour
record, a 5 MB body and an empty body each get a 4xx naming the problem; every payload format
must give the same probability. The load and payloads are ``bench.serving``'s own.
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
from tests.integration.services import model_server, post_json, register_champion
from tests.synth_ctg import synth_record

pytestmark = pytest.mark.integration

SMALL_NET = {"units": 8, "dense_units": 4, "conv_filters": 8}
EXPECTED = {  # bad kind -> words of its 4xx message
    "NaN values": "holds NaN",
    "infinity": "holds infinite",
    "strings": "non-numeric",
    "10-hour record": "at most 180 min",
    "5 MB body": "at most 180 min",
    "empty body": "valid JSON",
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
        with model_server(champion, uri, tmp / "serve.log") as url:
            yield url
    finally:
        print((tmp / "serve.log").read_text()[-3000:])


def test_bad_payloads_get_4xx_and_leave_concurrent_good_requests_alone(served: str, record):
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


def test_every_payload_format_gives_the_same_probability(served: str, record):
    probs = {}
    for payload in PAYLOADS:
        content_type = CONTENT_TYPES.get(payload, JSON)
        body = good_payload(*record, payload)
        status, body = post_json(f"{served}/invocations", body, content_type=content_type)
        assert status == 200, (payload, body)
        probs[payload] = body["predictions"][0]["probability"]
    assert np.ptp(list(probs.values())) < 1e-6, probs
