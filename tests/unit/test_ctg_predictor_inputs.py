"""Input formats and guards of the served CTG predictor (``CtgPredictor.prepare``).

No network is needed: ``prepare`` turns raw input into the network input, so every format is
checked by giving the same arrays as the DataFrame of raw samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stages.ctg.models import network as ctg_model
from stages.ctg.models.network import CtgPredictor
from tests.synth_ctg import preprocess_settings, signal_settings, synth_record, train_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FS_HZ = 4.0


def predictor(**signal: Any) -> CtgPredictor:
    """The network's predictor (no network) on the last 20 min; ``signal``: ctg_signal changes."""
    from dataclasses import asdict

    net = train_settings()
    config = {
        "ctg_signal": asdict(signal_settings(**signal)),
        "preprocess_ctg": asdict(preprocess_settings(last_minutes=20)),
        "normalisation": asdict(ctg_model.normalisation(net)),
        "alert_threshold": None,
        "threshold_rule": "test",
        "seq_len": 1200,
    }
    return CtgPredictor(None, config)


def test_a_saved_config_without_a_key_is_an_error_naming_it() -> None:
    """No fallback: a model folder saved by this code holds every key the predictor reads."""
    from stages.common.settings import SettingsError

    good = predictor().config
    bad = {**good, "ctg_signal": {k: v for k, v in good["ctg_signal"].items() if k != "fs_hz"}}
    with pytest.raises(SettingsError, match="fs_hz"):
        CtgPredictor(None, bad)
    with pytest.raises(KeyError, match="seq_len"):
        CtgPredictor(None, {k: v for k, v in good.items() if k != "seq_len"})


@pytest.fixture(scope="module")
def records() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    return [synth_record(rng, acidemic=bool(i), duration_min=25.0)[:2] for i in range(2)]


def test_compact_and_tensor_inputs_give_the_dataframe_arrays(records: list) -> None:
    p = predictor()
    frame = pd.DataFrame({"fhr_bpm": [f for f, _ in records], "uc": [u for _, u in records]})
    want = p.prepare(frame)
    tensor = {"fhr_bpm": np.stack([f for f, _ in records]), "uc": np.stack([u for _, u in records])}
    compact = {
        "fhr_b64": [CtgPredictor.encode_b64(f) for f, _ in records],
        "uc_b64": [CtgPredictor.encode_b64(u) for _, u in records],
        "fs_hz": 4,  # one value for every record
    }
    one = {"fhr_b64": CtgPredictor.encode_b64(records[0][0]), "uc": records[0][1].tolist()}
    np.testing.assert_array_equal(p.prepare(tensor), want)
    np.testing.assert_array_equal(p.prepare(compact), want)
    np.testing.assert_array_equal(p.prepare(one), want[:1])


def test_gain_scales_the_compact_samples(records: list) -> None:
    fhr, uc = records[0]
    p = predictor()
    at_100 = p.prepare({"fhr_b64": CtgPredictor.encode_b64(fhr), "uc": uc})
    at_4 = p.prepare({"fhr_b64": CtgPredictor.encode_b64(fhr, 4.0), "uc": uc, "gain": 4})
    np.testing.assert_array_equal(at_4, at_100)


@pytest.mark.parametrize(("minutes", "accepted"), [(30.0, True), (30.25, False)])
def test_records_longer_than_max_input_minutes_are_refused(minutes: float, accepted: bool):
    n = int(minutes * 60 * FS_HZ)
    record = {"fhr_bpm": np.full(n, 140.0), "uc": np.full(n, 10.0)}
    p = predictor(max_input_minutes=30)
    if accepted:
        assert p.prepare(record).shape[0] == 1
    else:
        with pytest.raises(ValueError, match="at most 30 min"):
            p.prepare(record)


def test_default_maximum_is_documented_and_enforced() -> None:
    p = predictor()
    assert p.max_input_minutes == 180.0  # ctg_signal.max_input_minutes
    n = 10 * 60 * 60 * 4  # a 10-hour record
    with pytest.raises(ValueError, match="600.0 min.*at most 180 min"):
        p.prepare({"fhr_bpm": np.full(n, 140.0), "uc": np.full(n, 10.0)})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"fhr_bpm": np.nan}, "NaN values; mark missing samples with 0"),
        ({"uc": np.inf}, "uc holds infinite"),
        ({"fhr_bpm": ["140.25"] * 6000}, "fhr_bpm holds non-numeric"),  # numbers as strings
        ({"fhr_b64": "not base64!"}, "not valid base64"),
        ({"fhr_b64": "AAAA"}, "not int16"),
        ({"fhr_b64": 5}, "base64 string"),
        ({"fhr_bpm": [1.0], "fhr_b64": "AAAA"}, "not both"),
        ({"gain": 0}, "gain must be positive"),
        ({"fs_hz": "fast"}, "fs_hz 'fast' is not a number"),
    ],
)
def test_bad_values_are_refused_with_a_message(records: list, change: dict, match: str) -> None:
    fhr, uc = records[0]
    record: dict[str, Any] = {"fhr_bpm": fhr.copy(), "uc": uc.copy()}
    for key, value in change.items():
        if key in ("fhr_bpm", "uc") and np.isscalar(value):
            record[key][100] = value  # one bad sample
        else:
            record[key] = value
    if "fhr_b64" in change and "fhr_bpm" not in change:
        del record["fhr_bpm"]
    with pytest.raises(ValueError, match=match):
        predictor().prepare(record)


def test_columns_of_different_lengths_are_refused(records: list) -> None:
    fhr, uc = records[0]
    with pytest.raises(ValueError, match="records per column"):
        predictor().prepare({"fhr_bpm": [fhr, fhr], "uc": [uc]})
