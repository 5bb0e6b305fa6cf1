"""The CTG feature families: nested out-of-fold fitting, numpy scoring of exported models, and
the served predictor's input (the network's) on raw synthetic records."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.ctg.features.figo import record_features
from stages.ctg.models import families
from stages.ctg.models import family_predictor as fm
from stages.ctg.models.settings import Gbm
from stages.ctg.signal.cleaning import CleaningParams
from tests.synth_ctg import preprocess_settings, signal_settings, synth_fhr

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


class Spy:
    """A 'model' that predicts its training rows' label rate and remembers which rows (the id in
    column ``id_col``) it was fitted on."""

    fitted: list[set[int]] = []

    def __init__(self, id_col: int = 0) -> None:
        self.id_col = id_col

    def fit(self, x: np.ndarray, y: np.ndarray) -> Spy:
        Spy.fitted.append({int(i) for i in x[:, self.id_col]})
        self.rate = float(np.mean(y))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([1 - np.full(len(x), self.rate), np.full(len(x), self.rate)])


FOLDS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
Y = np.array([1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0])


def test_oof_predict_fits_each_fold_on_the_other_folds_only() -> None:
    Spy.fitted = []
    ids = np.arange(Y.size, dtype=float)[:, None]
    oof = families.oof_predict(Spy, ids, Y, FOLDS)
    # known answer: fold k's probability is the label rate of the other folds
    for k in range(3):
        assert oof[FOLDS == k] == pytest.approx(Y[FOLDS != k].mean())
        assert Spy.fitted[k] == set(np.flatnonzero(FOLDS != k))


def test_hybrid_stacker_for_fold_k_never_sees_fold_k_rows() -> None:
    Spy.fitted = []
    ids = np.arange(Y.size, dtype=float)[:, None]
    lstm_oof = np.linspace(0.1, 0.9, Y.size)
    stacked = fm.stack_inputs(lstm_oof, ids)  # column 0: the network's logit, 1: the row id
    assert stacked[:, 0] == pytest.approx(np.log(lstm_oof / (1 - lstm_oof)))
    families.hybrid_oof(lambda: Spy(id_col=1), stacked, Y, FOLDS)
    assert len(Spy.fitted) == 3
    for k, seen in enumerate(Spy.fitted):
        assert seen.isdisjoint(np.flatnonzero(FOLDS == k))
        assert seen == set(np.flatnonzero(FOLDS != k))


def test_a_training_part_with_one_class_gets_its_rate() -> None:
    y = np.array([0, 0, 1, 0])
    oof = families.oof_predict(Spy, np.zeros((4, 1)), y, np.array([0, 0, 1, 1]))
    assert oof[:2] == pytest.approx([0.5, 0.5]) and oof[2:] == pytest.approx([0.0, 0.0])


def _features(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 3.0] + [0.0, 140.0, 0.0, 5.0]
    y = (x[:, 0] + 0.1 * x[:, 1] - 14 + rng.normal(size=n) > 0).astype(int)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x, y


def test_exported_logistic_scores_as_scikit_learn() -> None:
    x, y = _features()
    pipe = families.logistic_pipeline(1.0, 0).fit(x, y)
    scorer, arrays = fm.export_linear(pipe)
    assert arrays == {}
    assert fm.linear_proba(scorer, x) == pytest.approx(pipe.predict_proba(x)[:, 1], abs=1e-12)


def test_exported_trees_score_as_scikit_learn_missing_values_included() -> None:
    x, y = _features()
    gbm = Gbm(**{"max_iter": 30, "learning_rate": 0.1, "max_leaf_nodes": 6, "min_samples_leaf": 5,
           "l2_regularization": 1.0})  # fmt: skip
    clf = families.gbm_classifier(gbm, 0).fit(x, y)
    scorer, trees = fm.export_trees(clf)
    assert trees["tree_start"].size == 30
    assert fm.trees_proba(trees, scorer["baseline"], x) == pytest.approx(
        clf.predict_proba(x)[:, 1], abs=1e-12
    )
    # a fitted twice with the same seed is the same model (deterministic)
    again = fm.export_trees(families.gbm_classifier(gbm, 0).fit(x, y))[1]
    assert all(np.array_equal(trees[k], again[k]) for k in trees)


def _record(minutes: float = 40.0, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * 4)
    fhr = synth_fhr(n, decels=[(600, 60, 30), (1500, 60, 25)], rng=rng)
    uc = np.round(10 + 30 * np.clip(np.sin(np.arange(n) / 4 / 180 * np.pi), 0, None)) / 2 * 2
    return fhr, uc


def _config(columns: list[str], scorer: dict) -> dict:
    return {
        "family": "logistic",
        "columns": columns,
        "window_min": 60.0,
        "ctg_signal": asdict(signal_settings()),
        "preprocess_ctg": asdict(preprocess_settings()),
        "alert_threshold": 0.5,
        "threshold_rule": "test",
        "scorer": scorer,
    }


def test_served_family_computes_the_pipelines_features_from_raw_input(tmp_path: Path) -> None:
    fhr, uc = _record()
    expected = record_features(
        fhr, uc, 4.0, 60.0, CleaningParams.from_settings(preprocess_settings())
    )
    columns = sorted(expected)
    k = len(columns)
    scorer = {"kind": "linear", "median": [0.0] * k, "mean": [0.0] * k, "scale": [1.0] * k,
              "coef": [0.01] * k, "intercept": -1.0}  # fmt: skip
    fm.save_family_dir(tmp_path / "logistic", _config(columns, scorer))
    predictor = fm.load_predictor({"model_dir": str(tmp_path / "logistic")})
    frame = pd.DataFrame({"fhr_bpm": [fhr.tolist()], "uc": [uc.tolist()], "fs_hz": [4.0]})
    feats = predictor.features(frame)
    assert feats[0] == pytest.approx([expected[c] for c in columns], nan_ok=True)
    out = predictor.predict(frame)
    assert list(out.columns) == ["probability", "alert"]
    assert out["probability"][0] == pytest.approx(fm.linear_proba(scorer, feats)[0])
    # the same input contract as the network: a too short record is refused
    with pytest.raises(ValueError, match="at least 10 min"):
        predictor.predict({"fhr_bpm": fhr[: 4 * 60 * 5].tolist(), "uc": uc[: 4 * 60 * 5].tolist()})


class _Network:
    def predict(self, model_input: object) -> pd.DataFrame:
        return pd.DataFrame({"probability": [0.2]})


def test_hybrid_puts_the_networks_logit_before_the_features() -> None:
    fhr, uc = _record()
    columns = ["baseline_bpm", "stv_ms"]
    config = {**_config(columns, {}), "family": "hybrid"}
    predictor = fm.FamilyPredictor(config, lambda x: x[:, 0] * 0 + 0.7, lstm=_Network())
    x = predictor.prepare({"fhr_bpm": fhr.tolist(), "uc": uc.tolist()})
    assert x.shape == (1, 3) and x[0, 0] == pytest.approx(np.log(0.2 / 0.8))
    assert predictor.predict({"fhr_bpm": fhr.tolist(), "uc": uc.tolist()})["alert"][0]
