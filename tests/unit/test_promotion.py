"""Promotion without MLflow: pairing, the one decision rule, the identity rule, history, locks."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stages.common.registry import promotion
from stages.common.registry.lock import RegistryLockError, advisory_key, lock_target
from stages.common.registry.promotion import Candidate, decide
from stages.common.registry.provenance import digest_problems, file_digests, registration_key
from tests.synth_registry import oof_evaluation, oof_items

pytestmark = pytest.mark.unit


def test_pairing_uses_only_common_items_in_the_challengers_order():
    champ = oof_items(0.7, n=100).sample(frac=1.0, random_state=0)  # shuffled
    chall = oof_items(0.9, n=150)
    verdict = promotion.compare(oof_evaluation(0.9, n=150), champ, margin=0.005)
    assert verdict.n_records == 100 and verdict.method == "DeLong"
    a, b = promotion.align(chall, champ)
    assert list(a["item"]) == list(b["item"]) == [f"r{i}" for i in range(100)]
    none = promotion.compare(oof_evaluation(0.9), champ.assign(item="x" + champ["item"]), 0.0)
    assert not none.promote and none.n_records == 0


def test_worse_noisy_and_better_by_the_rule():
    champ = oof_items(0.75)
    assert not promotion.compare(oof_evaluation(0.65), champ, 0.005).promote
    assert promotion.compare(oof_evaluation(0.9), champ, 0.005).promote
    same_noise_small_gain = promotion.compare(oof_evaluation(0.753), champ, 0.005)
    assert not same_noise_small_gain.promote and "below the margin" in same_noise_small_gain.reason


@pytest.mark.parametrize(
    ("last", "champion", "completed", "action"),
    [
        (None, None, False, "ok"),
        ({"from": "1", "to": "2"}, "2", True, "ok"),
        ({"from": "1", "to": "2"}, "3", True, "ok"),  # moved by hand after a completed move
        ({"from": "1", "to": "2"}, "2", False, "retag"),  # killed between alias move and tags
        ({"from": "1", "to": "2"}, "1", False, "complete"),  # killed between entry and alias
        ({"from": None, "to": "1"}, None, False, "complete"),  # ... before the first champion
        ({"from": "1", "to": "2"}, "3", False, "rollback"),  # alias moved elsewhere meanwhile
    ],
)
def test_reconcile_a_half_written_move(last, champion, completed, action):
    assert promotion.reconcile(last, champion, completed) == action


def test_history_tags_round_trip_in_order():
    d = promotion.Decision("m", "2", "1", "cv_auc", 0.8, 0.7, 0.005, True, "better", "DeLong",
                           400, 0.1, 0.05, float("nan"))  # fmt: skip
    entry = promotion.history_entry(d, {"stage": "train_ctg", "user": "u"}, "2026-01-01T00:00:00Z")
    tags = {promotion.history_key(12): promotion.dumps(entry), promotion.history_key(3): "{}"}
    assert [e["seq"] for e in promotion.history(tags)] == [3, 12]
    assert promotion.history(tags)[1]["ci"] == [0.05, None]  # NaN stored as null
    table = promotion.history_table(promotion.history(tags)[1:])
    assert table.iloc[0]["to"] == "v2" and table.iloc[0]["method"] == "DeLong"


# --------------------------------------------------------------------------- the decision rule


def _cand(version: str, auc: float | None = None, verified: bool = True, n: int = 400) -> Candidate:
    ev = None if auc is None else oof_evaluation(auc, n=n)
    return Candidate(version, f"d{version}", ev, verified)


@pytest.mark.parametrize(
    ("challenger", "champion", "promoted", "reason"),
    [
        (_cand("2", 0.8), None, True, "no champion yet"),
        (_cand("2", 0.8), _cand("2", 0.8), False, "already the champion"),
        (_cand("2", None), _cand("1", 0.7), False, "cannot pair"),
        (_cand("2", 0.8), _cand("1", None), False, "no stored per-item evaluation"),
        (_cand("2", 0.8), _cand("1", None, verified=False), True, "predates artifact digests"),
        (_cand("2", 0.99, verified=False), _cand("1", 0.7), False, "never promoted"),
        (_cand("2", 0.9), _cand("1", 0.75), True, "better by"),
        (_cand("2", 0.753), _cand("1", 0.75), False, "below the margin"),
        (_cand("2", 0.65), _cand("1", 0.75), False, ""),
    ],
)
def test_one_decision_rule(challenger, champion, promoted, reason):
    d = decide("m", challenger, champion, 0.005)
    assert d.promoted is promoted and reason in d.reason, d.reason
    assert d.challenger_version == "2" and d.champion_version == (champion and champion.version)
    if challenger.evaluation is not None:  # its own figure: the AUC of its own items
        items = challenger.evaluation.items
        assert d.challenger_value == pytest.approx(roc_auc_score(items["y"], items["pred"]))


def test_decision_figures_are_delongs_on_the_common_records():
    # known answer: the paired difference equals DeLong's on the same 400 records
    from stages.common.ml.paired import delong_test

    chall, champ = oof_evaluation(0.9), oof_evaluation(0.75)
    d = decide("m", Candidate("2", evaluation=chall), Candidate("1", evaluation=champ), 0.005)
    ref = delong_test(chall.items["y"].to_numpy(), champ.items["pred"].to_numpy(),
                      chall.items["pred"].to_numpy())  # fmt: skip
    assert d.difference == pytest.approx(ref.difference) and d.n == 400
    assert (d.ci_low, d.ci_high) == pytest.approx((ref.ci_low, ref.ci_high))
    assert d.champion_data_version == "" and d.method == "DeLong"


def test_stored_scoring_round_trips():
    ev = promotion.Evaluation(oof_items(0.7), "val_x", "bootstrap", "auc", 200, 3)
    back = promotion.Evaluation.from_stored(ev.items, ev.scoring())
    assert back.scoring() == ev.scoring() and back.items_csv() == ev.items_csv()


# --------------------------------------------------------------------------- the identity rule


def _folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.bin").write_bytes(b"\x00weights")
    (root / "sub" / "config.json").write_text('{"a": 1}')
    return root


def test_digests_of_every_file_known_answer(tmp_path: Path):
    folder = _folder(tmp_path / "m")
    assert file_digests(folder) == {
        "model.bin": hashlib.sha256(b"\x00weights").hexdigest(),
        "sub/config.json": hashlib.sha256(b'{"a": 1}').hexdigest(),
    }
    found = {**file_digests(folder), "model.bin": "0" * 64, "extra.py": "1" * 64}
    del found["sub/config.json"]
    assert digest_problems(file_digests(folder), found) == [
        "modified: model.bin", "missing: sub/config.json", "unexpected: extra.py"
    ]  # fmt: skip
    assert digest_problems(file_digests(folder), file_digests(folder)) == []


def test_same_bytes_same_key_any_byte_or_item_changes_it(tmp_path: Path):
    a = _folder(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)  # another place, same bytes
    ev = oof_evaluation(0.7)
    key = registration_key(a, "x:y", ev.items_csv(), ev.scoring())
    assert registration_key(b, "x:y", ev.items_csv(), ev.scoring()) == key
    # known answer: the documented layout, hashed by hand
    h = hashlib.sha256()
    for path, digest in file_digests(a).items():
        h.update(f"file {path} {digest}\n".encode())
    h.update(b"loader x:y\n")
    import json

    h.update(json.dumps(ev.scoring(), sort_keys=True).encode() + b"\n")
    h.update(hashlib.sha256(ev.items_csv()).hexdigest().encode())
    assert key == h.hexdigest()
    (b / "model.bin").write_bytes(b"\x01weights")
    assert registration_key(b, "x:y", ev.items_csv(), ev.scoring()) != key
    assert registration_key(a, "x:z", ev.items_csv(), ev.scoring()) != key
    other = oof_evaluation(0.7, noise_seed=2)
    assert registration_key(a, "x:y", other.items_csv(), ev.scoring()) != key
    (a / "model.bin").rename(a / "renamed.bin")
    assert registration_key(a, "x:y", ev.items_csv(), ev.scoring()) != key


# --------------------------------------------------------------------------- the lock


@pytest.mark.parametrize(
    ("tracking_uri", "lock_uri", "target"),
    [
        ("sqlite:////srv/mlflow.db", "", ("file", "/srv/mlflow.db.lock")),
        ("postgresql+psycopg2://u@h:5432/db", "", ("postgresql", "postgresql://u@h:5432/db")),
        (
            "http://mlflow:5000",
            "postgresql://u@db/mlflow",
            ("postgresql", "postgresql://u@db/mlflow"),
        ),
        ("http://mlflow:5000", "file:///shared/registry.lock", ("file", "/shared/registry.lock")),
        ("sqlite:////srv/mlflow.db", "postgresql://u@db/x", ("postgresql", "postgresql://u@db/x")),
    ],
)
def test_the_lock_every_decider_takes(tracking_uri, lock_uri, target):
    assert lock_target(tracking_uri, lock_uri) == target


def test_a_tracking_server_without_a_shared_lock_is_refused():
    with pytest.raises(RegistryLockError, match="FETAL_REGISTRY_LOCK_URI"):
        lock_target("https://mlflow.example:5000", "")
    assert advisory_key() == advisory_key() and -(2**63) <= advisory_key() < 2**63


def test_rank_auc_equals_sklearn_with_ties_and_one_class_is_nan():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.3).astype(int)
    p = np.round(y * 0.4 + rng.random(200), 1)  # many ties
    assert promotion.SCORES["auc"](y, p) == pytest.approx(roc_auc_score(y, p))
    assert promotion.SCORES["auc"](np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.5, 0.1])) == 0.75
    assert np.isnan(promotion.SCORES["auc"](np.ones(5), np.arange(5.0)))
