"""Behaviour of the CTG network and its served predictor, on a model trained briefly on synthetic
records: robustness to small gain changes and shifts, determinism, input validation, the MLflow
pyfunc round trip and champion/challenger promotion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stages.common.registry import champion, tracking
from stages.ctg.models import network as ctg_model
from stages.ctg.models.registration import SIGNATURE, example_input
from stages.ctg.models.training import fit_network
from stages.ctg.signal.preprocessing import preprocess_signals
from tests.synth_ctg import preprocess_settings, signal_settings, synth_record, train_settings
from tests.synth_registry import oof_evaluation

pytestmark = pytest.mark.model

FS_HZ = 4.0
ROOT = Path(__file__).resolve().parents[2]


def small_net() -> Any:
    return train_settings(
        epochs=2, patience=1, units=8, dense_units=4, conv_filters=8, batch_size=8,
        window_minutes=20,
    )  # fmt: skip


@pytest.fixture(scope="module")
def records() -> list[tuple[np.ndarray, np.ndarray, int]]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(12):
        fhr, uc, ph = synth_record(rng, acidemic=bool(i % 2), duration_min=25.0)
        out.append((fhr, uc, int(ph < 7.15)))
    return out


def training_arrays(recs: list, pre: Any, norm: Any) -> tuple[np.ndarray, np.ndarray]:
    pairs = [preprocess_signals(f, u, FS_HZ, pre) for f, u, _ in recs]
    x = ctg_model.model_inputs(
        np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), norm
    )
    return x, np.array([lab for _, _, lab in recs])


@pytest.fixture(scope="module")
def trained(records: list, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    params, pre = small_net(), preprocess_settings(last_minutes=20)  # short synthetic records
    norm = ctg_model.normalisation(params)
    x, y = training_arrays(records, pre, norm)
    net, curves, _ = fit_network(x, y, 5, params)
    folder = tmp_path_factory.mktemp("ctg_model")
    ctg_model.save_model_dir(folder, net, signal_settings(), pre, norm, 0.5, "test")
    predictor = ctg_model.load_predictor({"model_dir": str(folder)})
    return {
        "x": x,
        "y": y,
        "net": net,
        "dir": folder,
        "predictor": predictor,
        "params": params,
        "curves": curves,
    }


def raw_frame(recs: list) -> pd.DataFrame:
    return pd.DataFrame({"fhr_bpm": [f for f, _, _ in recs], "uc": [u for _, u, _ in recs]})


def test_training_reports_curves_and_probabilities(trained: dict) -> None:
    assert set(trained["curves"].columns) >= {"epoch", "loss", "val_loss", "val_auc"}
    assert 1 <= len(trained["curves"]) <= 2
    prob = ctg_model.predict_proba(trained["net"], trained["x"])
    assert prob.shape == (12,) and np.all((prob > 0) & (prob < 1))


def test_predictor_matches_network_on_stage_arrays(trained: dict, records: list) -> None:
    """Raw input through the predictor == preprocessed arrays through the network."""
    out = trained["predictor"].predict(raw_frame(records))
    direct = ctg_model.predict_proba(trained["net"], trained["x"])
    np.testing.assert_allclose(out["probability"].to_numpy(), direct, atol=1e-5)
    assert out["alert"].dtype == bool


def test_small_gain_change_does_not_flip_prediction(trained: dict, records: list) -> None:
    base = trained["predictor"].predict(raw_frame(records))["probability"].to_numpy()
    scaled = [(f * 1.02, u * 1.02, lab) for f, u, lab in records]
    gained = trained["predictor"].predict(raw_frame(scaled))["probability"].to_numpy()
    assert np.max(np.abs(gained - base)) < 0.05


def test_shift_of_a_few_seconds_does_not_flip_prediction(trained: dict, records: list) -> None:
    base = trained["predictor"].predict(raw_frame(records))["probability"].to_numpy()
    n = int(5 * FS_HZ)  # the record ends 5 s earlier: the analysed window moves by 5 s
    shifted = [(f[:-n], u[:-n], lab) for f, u, lab in records]
    moved = trained["predictor"].predict(raw_frame(shifted))["probability"].to_numpy()
    assert np.max(np.abs(moved - base)) < 0.05


def test_same_seed_same_model(trained: dict) -> None:
    net, _, _ = fit_network(trained["x"], trained["y"], 5, trained["params"])
    np.testing.assert_allclose(
        ctg_model.predict_proba(net, trained["x"]),
        ctg_model.predict_proba(trained["net"], trained["x"]),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (pd.DataFrame({"fhr_bpm": [[140.0] * 4000]}), "missing column"),
        (pd.DataFrame({"fhr_bpm": [["a"] * 4000], "uc": [[1.0] * 4000]}), "non-numeric"),
        (pd.DataFrame({"fhr_bpm": [[140.0] * 100], "uc": [[10.0] * 100]}), "at least"),
        (pd.DataFrame({"fhr_bpm": [[140.0] * 4000], "uc": [[10.0] * 3000]}), "samples but"),
        (
            pd.DataFrame({"fhr_bpm": [[140.0] * 4000], "uc": [[10.0] * 4000], "fs_hz": [8]}),
            "sampling rate",
        ),
        (pd.DataFrame({"fhr_bpm": [140.0], "uc": [10.0]}), "sequence"),
        (pd.DataFrame({"fhr_bpm": [[0.0] * 4000], "uc": [[10.0] * 4000]}), "no valid FHR"),
        ("not a table", "DataFrame"),
    ],
)
def test_predictor_rejects_malformed_input(trained: dict, bad: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        trained["predictor"].predict(bad)


def test_predictor_accepts_a_dict_for_one_record(trained: dict, records: list) -> None:
    fhr, uc, _ = records[0]
    one = trained["predictor"].predict({"fhr_bpm": fhr.tolist(), "uc": uc.tolist()})
    table = trained["predictor"].predict(raw_frame(records[:1]))
    assert one["probability"].iloc[0] == pytest.approx(table["probability"].iloc[0], abs=1e-6)


def _log(trained: dict) -> str:
    with tracking.run("test-ctg", "roundtrip"):
        return tracking.log_predictor_model(
            name="model",
            loader="stages.ctg.models.network:load_predictor",
            artifacts={"model_dir": str(trained["dir"])},
            input_example=example_input(),
            signature=tracking.model_signature(SIGNATURE),  # what train_ctg registers
        )


def test_pyfunc_roundtrip_through_the_registry(trained: dict, records: list) -> None:
    uri = _log(trained)
    version = tracking.register_model(
        uri, "ctg-test", {"cv_auc": 0.7, "eval_data_hash": "h"}, idempotency_key="k1"
    )
    decision = champion.promote_if_better("ctg-test", version, "cv_auc", 0.005)
    assert decision.promoted
    served = tracking.load_model(tracking.champion_uri("ctg-test"))
    frame = raw_frame(records[:3])
    got = served.predict(frame)
    want = trained["predictor"].predict(frame)
    np.testing.assert_allclose(
        got["probability"].to_numpy(), want["probability"].to_numpy(), atol=1e-6
    )
    with pytest.raises(Exception, match="missing inputs"):  # the signature's check
        served.predict(pd.DataFrame({"fhr_bpm": frame["fhr_bpm"]}))


def test_challenger_becomes_champion_only_when_better_by_margin(trained: dict) -> None:
    uri = _log(trained)
    name = "ctg-promo"
    tags = {"eval_data_hash": "h"}
    v1 = tracking.register_model(uri, name, {**tags, "cv_auc": 0.70}, idempotency_key="a")
    assert champion.promote_if_better(name, v1, "cv_auc", 0.005, oof_evaluation(0.70)).promoted
    v2 = tracking.register_model(uri, name, {**tags, "cv_auc": 0.703}, idempotency_key="b")
    d2 = champion.promote_if_better(name, v2, "cv_auc", 0.005, oof_evaluation(0.703))
    assert not d2.promoted and d2.champion_version == v1
    v3 = tracking.register_model(uri, name, {**tags, "cv_auc": 0.72}, idempotency_key="c")
    d3 = champion.promote_if_better(name, v3, "cv_auc", 0.005, oof_evaluation(0.85))
    assert d3.promoted
    c = tracking.client()
    assert str(c.get_model_version_by_alias(name, "champion").version) == v3
    # Same inputs registered again (a rerun): no new version.
    assert tracking.register_model(uri, name, {**tags, "cv_auc": 0.72}, idempotency_key="c") == v3
