"""Promotion without MLflow: pairing on common items, reconciling a half move, model cards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.common.registry import promotion
from stages.common.registry.model_card import NOT_A_DIAGNOSIS
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


def test_segmenter_card_and_pairing_agree_with_the_stage_report():
    from stages.ultrasound.pipeline.train_segmenter import oof_evaluation as seg_eval
    from stages.ultrasound.pipeline.train_segmenter import segmenter_card, summary

    rng = np.random.default_rng(0)
    names = [f"{i // 2:03d}_{'2' if i % 2 else ''}HC" for i in range(40)]
    err = rng.normal(0, 3, 40)
    err[5] = np.nan  # no ellipse: counts as its whole circumference
    oof = pd.DataFrame({"image": names, "fold": np.arange(40) % 5, "dice": rng.random(40),
                        "hc_error_mm": err, "hc_true_mm": rng.uniform(100, 300, 40)})  # fmt: skip
    report = {**summary(oof), "n_images": 40, "n_folds": 5}
    evaluation = seg_eval(oof, "oof_hc_error_mm_mean_neg", 0)
    assert evaluation.items["cluster"].nunique() == 20  # examinations
    value = promotion.SCORES["mean_neg"](evaluation.items["y"].to_numpy(),
                                         promotion.predictions(evaluation.items))  # fmt: skip
    assert value == pytest.approx(report["oof_hc_error_mm_mean_neg"])
    card = segmenter_card(report, evaluation, "sha:x")
    from stages.common.registry.model_card import model_card

    text = model_card(card)
    assert f"oof_hc_error_mm_mean: {report['oof_hc_error_mm_mean']:.4f} (95 % interval" in text
    assert f"oof_hc_error_mm_median: {report['oof_hc_error_mm_median']:.4f}" in text
    assert "40 HC18 images" in text and NOT_A_DIAGNOSIS in text and "`image`" in text
