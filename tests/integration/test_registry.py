"""The registry on a local sqlite store: register(spec), the locked paired decision, its history,
verified loading (tampered artifacts refused by name, no pickle), ``compare-models``."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from flows import registry
from stages.common.registry import champion, promotion, tracking
from stages.common.registry.loaders import LoaderNotAllowed
from stages.common.registry.registration import ModelSpec, register
from stages.ctg.models.registration import SIGNATURE
from tests.synth_registry import (
    BASELINE_LOADER,
    log_baseline_model,
    oof_items,
    write_baseline_dir,
)

pytestmark = pytest.mark.integration


def evaluation(items: pd.DataFrame) -> promotion.Evaluation:
    return promotion.Evaluation(items, "cv_auc", method="delong")


def new_version(tmp_path: Path, name: str, key: str, **tags: object) -> str:
    with tracking.run("registry-test", key, params={"key": key}):
        uri = log_baseline_model(str(tmp_path / "config.json"))
    return tracking.register_model(uri, name, {"data_version": f"d-{key}", **tags}, key)


def promote(tmp_path: Path, name: str, key: str, items: pd.DataFrame) -> promotion.Decision:
    v = new_version(tmp_path, name, key, cv_auc=0.5)
    return champion.promote_if_better(name, v, "cv_auc", 0.005, evaluation(items))


def spec(folder: Path, items: pd.DataFrame, name: str = "spec-model") -> ModelSpec:
    return ModelSpec(
        name, folder, BASELINE_LOADER, "baseline", evaluation(items), 0.005,
        {"name": name, "summary": "test baseline"}, SIGNATURE,
        tags={"data_version": "d"}, stage="",
    )  # fmt: skip


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
    better = promote(tmp_path, name, "d", oof_items(0.85))
    assert better.promoted and better.method == "DeLong" and better.n == 400
    assert better.champion_value == pytest.approx(0.70, abs=0.04)
    assert better.champion_data_version == "d-a" and better.challenger_data_version == "d-d"
    assert tracking.alias_version(name, "champion") == "4"
    tags = tracking.client().get_model_version(name, "2").tags
    assert tags["promotion_decision"] == "rejected" and tags["promotion_reason"] == worse.reason
    assert json.loads(tags["promotion_verdict"])["method"] == "DeLong"
    # grown data: 150 new records have no champion prediction: paired on the 400 common ones
    grown = promote(tmp_path, name, "e", oof_items(0.95, n=550))
    assert grown.n == 400 and grown.promoted


def test_ultrasound_items_are_paired_by_patient_bootstrap(tmp_path: Path):
    name = "paired-planes"
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    good = np.full((90, 3), 0.05)
    good[np.arange(90), y] = 0.9
    items = pd.DataFrame({"item": [f"img{i}" for i in range(90)], "cluster": np.arange(90) // 3,
                          "y": y})  # fmt: skip

    def ev(pred: np.ndarray) -> promotion.Evaluation:
        items_pred = promotion.with_predictions(items, pred)
        return promotion.Evaluation(items_pred, "val_log_loss_neg", score="log_loss_neg")

    v1 = new_version(tmp_path, name, "p1")
    assert champion.promote_if_better(name, v1, "", 0.0, ev(np.full((90, 3), 1 / 3))).promoted
    v2 = new_version(tmp_path, name, "p2")
    d = champion.promote_if_better(name, v2, "", 0.0, ev(good))
    assert d.promoted and d.n == 90 and d.ci_low > 0
    assert d.method == "paired bootstrap (patients, 1000)"
    assert d.metric == "val_log_loss_neg"


def test_history_per_move_a_kill_between_entry_and_alias_move_and_a_hand_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    name = "history-ctg"
    promote(tmp_path, name, "h1", oof_items(0.65))
    promote(tmp_path, name, "h2", oof_items(0.60))  # rejected: no entry
    promote(tmp_path, name, "h3", oof_items(0.80))
    hist = champion.champion_history(name)
    assert [(e["from"], e["to"]) for e in hist] == [(None, "1"), ("1", "3")]
    assert hist[1]["method"] == "DeLong" and hist[1]["n"] == 400 and hist[1]["user"]
    tags = tracking.client().get_model_version(name, "1").tags
    assert tags["replaced_by"] == "3" and "replaced_at" in tags

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    # killed after the history entry, before the alias move (injected failure)
    with monkeypatch.context() as m:
        m.setattr(tracking, "set_alias", killed)
        with pytest.raises(KeyboardInterrupt):
            promote(tmp_path, name, "h4", oof_items(0.95))
    assert tracking.alias_version(name, "champion") == "3"
    entry = champion.champion_history(name)[-1]
    assert entry["to"] == "4" and {"when", "from", "difference", "ci", "method"} <= set(entry)
    # the next decision completes the move first, then decides on its own challenger
    d = promote(tmp_path, name, "h5", oof_items(0.50))
    assert not d.promoted and d.champion_version == "4"
    assert tracking.client().get_model_version(name, "4").tags["promoted_at"] == entry["when"]

    # a half move whose alias was moved by hand since is rolled back: no entry stays
    with monkeypatch.context() as m:
        m.setattr(tracking, "set_alias", killed)
        with pytest.raises(KeyboardInterrupt):
            promote(tmp_path, name, "h6", oof_items(0.99))
    tracking.client().set_registered_model_alias(name, "champion", "3")
    assert champion.reconcile_history(name) == "rollback"
    assert [e["to"] for e in champion.champion_history(name)] == ["1", "3", "4"]
    assert champion.reconcile_history(name) == "ok"

    # compare-and-set: the champion is moved by hand while a decision runs: it decides again,
    # against the new champion, and its history entry says so
    decide = promotion.decide
    moved = []

    def hand_move_once(*args, **kwargs):
        if not moved:
            moved.append(True)
            tracking.set_alias(name, "champion", "1")
        return decide(*args, **kwargs)

    monkeypatch.setattr(promotion, "decide", hand_move_once)
    d = promote(tmp_path, name, "h7", oof_items(0.70))
    assert d.champion_version == "1" and d.promoted  # 0.70 vs v1's 0.65, not vs v3's 0.80
    assert champion.champion_history(name)[-1]["from"] == "1"
    assert registry.main([name, "--history"]) == 0


def test_register_spec_is_idempotent_and_never_moves_the_champion(tmp_path: Path):
    folder = write_baseline_dir(tmp_path / "model")
    first = register(spec(folder, oof_items(0.7)))
    again = register(spec(folder, oof_items(0.7)))  # same bytes: same version
    assert first.created and not again.created and again.version == first.version
    assert again.key == first.key and again.value == pytest.approx(first.value)
    assert first.ci_low < first.value < first.ci_high
    assert tracking.alias_version("spec-model", "challenger") == first.version
    assert tracking.alias_version("spec-model", "champion") is None
    (folder / "config.json").write_text('{"brady_bpm": 111.0, "alert_threshold": 0.5}')
    changed = register(spec(folder, oof_items(0.7)))  # one byte differs: a new version
    assert changed.created and changed.version != first.version
    assert len(tracking.compare_versions("spec-model")) == 2
    stored = tracking.version_evaluation("spec-model", first.version)
    assert stored is not None and stored.items_csv() == evaluation(oof_items(0.7)).items_csv()
    card = tracking.client().get_model_version("spec-model", first.version).description
    assert "test baseline" in card and "not a diagnosis" in card
    with pytest.raises(LoaderNotAllowed, match="os:system"):
        register(ModelSpec(**{**spec(folder, oof_items(0.7)).__dict__, "loader": "os:system"}))


def test_load_model_verifies_every_artifact_and_runs_no_pickle(tmp_path: Path, monkeypatch):
    import mlflow

    folder = write_baseline_dir(tmp_path / "model")
    v = register(spec(folder, oof_items(0.7), "verified")).version
    frame = pd.DataFrame({"fhr_bpm": [[100.0] * 8, [140.0] * 8], "uc": [[1.0] * 8] * 2})

    def no_pickle(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    import cloudpickle

    with monkeypatch.context() as m:  # loading imports installed code only: no unpickling
        m.setattr(pickle, "load", no_pickle)
        m.setattr(pickle, "loads", no_pickle)
        m.setattr(cloudpickle, "load", no_pickle)
        m.setattr(cloudpickle, "loads", no_pickle)
        out = tracking.load_model(f"models:/verified/{v}").predict(frame)
    assert list(out["probability"]) == [1.0, 0.0]
    mv = tracking.client().get_model_version("verified", v)
    store = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source))  # the store itself
    files = {p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]
    assert set(json.loads(mv.tags[tracking.DIGESTS_TAG])) == files
    assert tracking.MODEL_CODE_FILE in files and "artifacts/model/config.json" in files

    config = store / "artifacts/model/config.json"
    original = config.read_bytes()
    config.write_text('{"brady_bpm": 250.0, "alert_threshold": 0.0}')  # tampered artifact
    with pytest.raises(tracking.ModelIntegrityError, match=rf"verified v{v}.*modified: "
                       r"artifacts/model/config.json"):  # fmt: skip
        tracking.load_model("models:/verified@challenger")
    config.write_bytes(original)
    (store / "extra.py").write_text("import os\n")  # a file nobody registered
    with pytest.raises(tracking.ModelIntegrityError, match="unexpected: extra.py"):
        tracking.load_model(f"models:/verified/{v}")
    (store / "extra.py").unlink()
    (store / tracking.MODEL_CODE_FILE).unlink()
    with pytest.raises(tracking.ModelIntegrityError, match=f"missing: {tracking.MODEL_CODE_FILE}"):
        tracking.load_model(f"models:/verified/{v}")
    with pytest.raises(ValueError, match="only registered versions"):
        tracking.load_model(f"runs:/{mv.run_id}/model")


def test_a_pickled_champion_from_before_is_refused_and_replaced(tmp_path: Path):
    name = "legacy-ctg"
    v1 = new_version(tmp_path, name, "old")
    tracking.client().delete_model_version_tag(name, v1, tracking.DIGESTS_TAG)  # as before
    tracking.set_alias(name, "champion", v1)
    with pytest.raises(tracking.ModelIntegrityError, match="legacy-ctg v1 has no recorded"):
        tracking.load_model(tracking.champion_uri(name))
    d = promote(tmp_path, name, "new", oof_items(0.6))
    assert d.promoted and "predates artifact digests" in d.reason
    assert tracking.load_model(tracking.champion_uri(name)) is not None


def test_compare_models_shows_the_deciding_fields(tmp_path: Path, capsys):
    name = "cmp-model"
    promote(tmp_path, name, "a", oof_items(0.70))
    promote(tmp_path, name, "b", oof_items(0.90))
    assert registry.main([name]) == 0
    out = capsys.readouterr().out
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
    assert registry.main(["no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "no-such-model" in err and "cannot read" in err


def test_two_registrations_of_one_version_finish_together(tmp_path: Path):
    """The race CI met on PostgreSQL: two runs with one key finish the same version at once, the
    store selects, finds no digests tag, and both insert it. Reproduced on the sqlite store: a
    second client writes the tag and the alias between the first writer's select and its flush."""
    name = "raced"
    v = new_version(tmp_path, name, "k")
    c = tracking.client()
    c.delete_model_version_tag(name, v, tracking.DIGESTS_TAG)  # as if a crash left them out
    c.delete_registered_model_alias(name, tracking.CHALLENGER)
    other = MlflowClient(tracking.tracking_uri())  # the other run
    won: list[str] = []

    def the_other_run_writes_first(session, _context, _instances) -> None:
        kinds = {"alias" if hasattr(o, "alias") else "tag" for o in session.new}
        for kind in sorted(kinds - set(won)):
            won.append(kind)  # first, so that the other client's own flush passes through
            if kind == "tag":
                other.set_model_version_tag(name, v, tracking.DIGESTS_TAG, "written by the other")
            else:
                other.set_registered_model_alias(name, tracking.CHALLENGER, v)

    event.listen(Session, "before_flush", the_other_run_writes_first)
    try:
        tracking.finish_registration(name, v)
    finally:
        event.remove(Session, "before_flush", the_other_run_writes_first)
    assert won == ["tag", "alias"]  # both writes met a row inserted after their select
    tags = c.get_model_version(name, v).tags
    assert tags[tracking.DIGESTS_TAG] != "written by the other"  # ours, written again
    assert tracking.alias_version(name, tracking.CHALLENGER) == v
