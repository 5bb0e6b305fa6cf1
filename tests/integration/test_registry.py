"""The registry: paired promotion on common items, the champion's history, ``compare-models``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows import registry
from flows.tasks import log_baseline_model
from stages.common.registry import promotion, tracking
from tests.synth_registry import oof_items

pytestmark = pytest.mark.integration


def evaluation(items: pd.DataFrame) -> promotion.Evaluation:
    return promotion.Evaluation(items, "cv_auc", method="delong")


def new_version(tmp_path: Path, name: str, key: str, **tags: object) -> str:
    with tracking.run("registry-test", key, params={"key": key}):
        uri = log_baseline_model(str(tmp_path / "config.json"))
    return tracking.register_model(uri, name, {"data_version": f"d-{key}", **tags}, key)


def promote(tmp_path: Path, name: str, key: str, items: pd.DataFrame) -> promotion.Decision:
    v = new_version(tmp_path, name, key, cv_auc=0.5)
    return tracking.promote_if_better(name, v, "cv_auc", 0.005, evaluation(items))


def test_worse_noisy_and_clearly_better_challengers(tmp_path: Path):
    name = "paired-ctg"
    first = promote(tmp_path, name, "a", oof_items(0.70))
    assert first.promoted and first.reason == "no champion yet"
    worse = promote(tmp_path, name, "b", oof_items(0.62))
    assert not worse.promoted and worse.difference < 0
    assert tracking.alias_version(name, "champion") == "1"
    # better by more than the margin, but on 60 records with other noise: within noise
    noisy = promote(tmp_path, name, "c", oof_items(0.75, noise_seed=7).iloc[:60])
    assert noisy.difference >= 0.005 and noisy.ci_low <= 0 and not noisy.promoted, noisy
    assert "within noise" in noisy.reason and noisy.n == 60
    assert tracking.alias_version(name, "champion") == "1"
    better = promote(tmp_path, name, "d", oof_items(0.85))
    assert better.promoted and better.method == "DeLong" and better.n == 400
    assert better.ci_low > 0 and better.difference >= 0.005
    assert better.champion_value == pytest.approx(0.70, abs=0.04)
    assert better.champion_data_version == "d-a" and better.challenger_data_version == "d-d"
    assert tracking.alias_version(name, "champion") == "4"
    tags = tracking.client().get_model_version(name, "2").tags
    assert tags["promotion_decision"] == "rejected" and tags["promotion_reason"] == worse.reason
    assert json.loads(tags["promotion_verdict"])["method"] == "DeLong"


def test_grown_data_is_compared_on_the_common_records_only(tmp_path: Path):
    name = "grown-ctg"
    assert promote(tmp_path, name, "old", oof_items(0.70, n=300)).promoted
    grown = oof_items(0.85, n=450)  # 150 new records: no champion prediction for them
    d = promote(tmp_path, name, "new", grown)
    assert d.n == 300 and d.promoted
    assert d.challenger_value == pytest.approx(
        promotion.compare(evaluation(grown.iloc[:300]), grown.iloc[:300], 0.0).challenger
    )


def test_ultrasound_champion_is_rescored_per_item_by_patients(tmp_path: Path):
    name = "paired-planes"
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    good = np.full((90, 3), 0.05)
    good[np.arange(90), y] = 0.9
    items = pd.DataFrame({"item": [f"img{i}" for i in range(90)], "cluster": np.arange(90) // 3,
                          "y": y})  # fmt: skip
    ev = promotion.Evaluation(
        promotion.with_predictions(items, good), "val_log_loss_neg", score="log_loss_neg"
    )
    v1 = new_version(tmp_path, name, "p1")
    assert tracking.promote_if_better(name, v1, "val_log_loss_neg", 0.0, ev).promoted
    v2 = new_version(tmp_path, name, "p2")
    asked = []

    def rescore(champion) -> np.ndarray:  # the champion's probabilities on the same crops
        asked.append(champion)
        return np.full((90, 3), 1 / 3)

    d = tracking.promote_if_better(name, v2, "val_log_loss_neg", 0.0, ev, rescore=rescore)
    assert len(asked) == 1 and d.promoted and d.n == 90
    assert d.method == "paired bootstrap (patients, 1000)" and d.ci_low > 0
    v3 = new_version(tmp_path, name, "p3")

    def broken(champion) -> np.ndarray:
        raise OSError("registry unreachable")

    d = tracking.promote_if_better(name, v3, "val_log_loss_neg", 0.0, ev, rescore=broken)
    assert not d.promoted and "registry unreachable" in d.reason
    assert tracking.alias_version(name, "champion") == v2


def test_history_per_move_and_a_kill_between_entry_and_alias_move(tmp_path: Path, monkeypatch):
    name = "history-ctg"
    promote(tmp_path, name, "h1", oof_items(0.65))
    promote(tmp_path, name, "h2", oof_items(0.60))  # rejected: no entry
    promote(tmp_path, name, "h3", oof_items(0.80))
    hist = tracking.champion_history(name)
    assert [(e["from"], e["to"]) for e in hist] == [(None, "1"), ("1", "3")]
    assert hist[1]["method"] == "DeLong" and hist[1]["n"] == 400 and hist[1]["user"]
    tags = tracking.client().get_model_version(name, "1").tags
    assert tags["replaced_by"] == "3" and "replaced_at" in tags

    # killed after the history entry, before the alias move (injected failure)
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as m:
        m.setattr(tracking, "set_alias", killed)
        with pytest.raises(KeyboardInterrupt):
            promote(tmp_path, name, "h4", oof_items(0.95))
    assert tracking.alias_version(name, "champion") == "3"
    assert [e["to"] for e in tracking.champion_history(name)] == ["1", "3", "4"]
    entry = tracking.champion_history(name)[-1]
    assert {"when", "from", "to", "difference", "ci", "method", "n", "reason"} <= set(entry)
    # the next decision completes the move first, then decides on its own challenger
    d = promote(tmp_path, name, "h5", oof_items(0.50))
    assert not d.promoted and d.champion_version == "4"
    assert tracking.alias_version(name, "champion") == "4"
    assert tracking.client().get_model_version(name, "4").tags["promoted_at"] == entry["when"]

    # a half move whose alias was moved by hand since is rolled back: no entry stays
    with monkeypatch.context() as m:
        m.setattr(tracking, "set_alias", killed)
        with pytest.raises(KeyboardInterrupt):
            promote(tmp_path, name, "h6", oof_items(0.99))
    tracking.client().set_registered_model_alias(name, "champion", "3")
    assert tracking.reconcile_history(name) == "rollback"
    assert [e["to"] for e in tracking.champion_history(name)] == ["1", "3", "4"]
    # a completed move stays history when the alias is moved by hand afterwards
    assert tracking.reconcile_history(name) == "ok"
    assert [e["to"] for e in tracking.champion_history(name)] == ["1", "3", "4"]

    assert registry.main([name, "--history"]) == 0


def test_compare_models_shows_the_deciding_fields(tmp_path: Path, capsys):
    name = "cmp-model"
    promote(tmp_path, name, "a", oof_items(0.70))
    promote(tmp_path, name, "b", oof_items(0.90))
    assert registry.main([name]) == 0
    out = capsys.readouterr().out
    print(out)
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["field", "v2", "v1"]  # newest first
    fields = [ln.split()[0] for ln in lines[2:] if ln.strip() and not ln.startswith(name)]
    assert fields == [f for f in registry.DEFAULT_FIELDS if f != "family"]  # no family tag
    assert "DeLong" in out and "champion is v2" in out
    assert registry.main([name, "--all"]) == 0
    assert "idempotency_key" in capsys.readouterr().out
    assert registry.main([name, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == [2, 1] and rows[0]["decision"] == "promoted"
    assert registry.main([name, "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert table[0]["version"] == "2"
    assert registry.main([name, "--format", "markdown", "--history"]) == 0
    hist = capsys.readouterr().out
    assert hist.count("| v") >= 2 and "DeLong" in hist


def test_compare_models_unknown_name_fails_clearly(capsys):
    assert registry.main(["no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "no-such-model" in err and "cannot read" in err


def test_a_ctg_champion_from_before_stored_items_is_paired_on_its_logged_oof(tmp_path: Path):
    from stages.ctg.models.registration import oof_evaluation

    def oof(auc: float) -> pd.DataFrame:  # train_ctg's oof_predictions.csv columns
        items = oof_items(auc)
        return pd.DataFrame({"record": items["item"], "fold": 0, "label": items["y"],
                             "probability": items["pred"]})  # fmt: skip

    name = "legacy-ctg"
    oof(0.7).to_csv(tmp_path / "oof_predictions.csv", index=False)
    with tracking.run("registry-test", "old"):
        uri = log_baseline_model(str(tmp_path / "config.json"))
        tracking.log_artifact(tmp_path / "oof_predictions.csv")  # what train_ctg always logged
    v1 = tracking.register_model(uri, name, {"cv_auc": 0.7}, "old")
    tracking.set_alias(name, "champion", v1)  # promoted the old way: no items stored
    v2 = new_version(tmp_path, name, "new")
    d = tracking.promote_if_better(
        name, v2, "cv_auc", 0.005, oof_evaluation(oof(0.85), "cv_auc", 0)
    )
    assert d.promoted and d.n == 400 and d.method == "DeLong", d
