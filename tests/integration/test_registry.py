"""``fetal compare-models``: versions side by side with the champion named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows import registry
from flows.tasks import log_baseline_model
from stages.common import tracking

pytestmark = pytest.mark.integration


def test_compare_models_prints_versions_side_by_side(tmp_path: Path, capsys):
    with tracking.run("registry-test", "baseline", params={"brady_bpm": 110}):
        tracking.log_metrics({"cv_auc": 0.7})
        uri = log_baseline_model(str(tmp_path / "config.json"))
    for score, key, ehash in [(0.70, "a", "h1"), (0.76, "b", "h1")]:
        v = tracking.register_model(
            uri, "cmp-model", {"cv_auc": score, "eval_data_hash": ehash}, key
        )
        tracking.promote_if_better("cmp-model", v, "cv_auc", 0.005)

    assert registry.main(["cmp-model"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header == ["field", "v2", "v1"]  # newest first
    line = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[2:] if ln.strip()}
    assert line["cv_auc"] == ["0.76", "0.7"]
    assert line["eval_data_hash"] == ["h1", "h1"]
    assert line["aliases"] == ["challenger,champion"]  # v1 has no alias left: empty cell
    assert "param.brady_bpm" in line and "git_commit" in line
    assert "champion is v2" in out

    assert registry.main(["cmp-model", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == [2, 1]


def test_compare_models_unknown_name_fails_clearly(capsys):
    assert registry.main(["no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "no-such-model" in err and "cannot read" in err


def champion_then_challenger(
    tmp_path: Path, name: str, champion_acc: float, challenger_acc: float
) -> tuple[str, str, str]:
    """(model URI, v1, v2): v1 champion with ``acc`` measured on "old" evaluation data, v2
    registered (not promoted) with ``acc`` measured on "new" data."""
    with tracking.run("registry-test", "baseline", params={}):
        uri = log_baseline_model(str(tmp_path / "config.json"))
    tags = {"eval_data_hash": "old", "acc": champion_acc}
    v1 = tracking.register_model(uri, name, tags, f"{name}-1")
    assert tracking.promote_if_better(name, v1, "acc", 0.0).promoted
    tags = {"eval_data_hash": "new", "acc": challenger_acc}
    v2 = tracking.register_model(uri, name, tags, f"{name}-2")
    return uri, v1, v2


def test_champion_on_other_data_is_rescored_before_the_comparison(tmp_path: Path):
    """A champion tagged on old evaluation data is scored again on the challenger's data."""
    uri, v1, v2 = champion_then_challenger(tmp_path, "rescore-model", 0.9, 0.8)
    # by the tags alone the old champion wins: 0.9 measured on other crops
    assert not tracking.decide_promotion("rescore-model", v2, "acc", 0.0).promoted
    asked: list[str] = []

    def rescore(model_uri: str) -> float:
        asked.append(model_uri)
        return 0.7  # the champion on the new evaluation data

    decision = tracking.promote_if_better("rescore-model", v2, "acc", 0.0, rescore=rescore)
    assert asked == [f"models:/rescore-model/{v1}"]
    assert decision.promoted and decision.champion_value == 0.7
    assert "re-scored" in decision.reason
    assert tracking.alias_version("rescore-model", tracking.CHAMPION) == v2
    # same evaluation data: the tags are compared and nothing is re-scored
    v3 = tracking.register_model(uri, "rescore-model", {"acc": 0.79, "eval_data_hash": "new"}, "k3")
    assert not tracking.promote_if_better("rescore-model", v3, "acc", 0.0, rescore=rescore).promoted
    assert len(asked) == 1


def test_a_champion_that_cannot_be_rescored_is_kept(tmp_path: Path):
    """A failing or NaN re-score must not promote the challenger (NaN compares as 'better')."""
    _, v1, v2 = champion_then_challenger(tmp_path, "norescore", 0.5, 0.99)

    def broken(model_uri: str) -> float:
        raise OSError("registry unreachable")

    for rescore in (broken, lambda _uri: float("nan")):
        decision = tracking.promote_if_better("norescore", v2, "acc", 0.0, rescore=rescore)
        assert not decision.promoted and decision.same_data is False
        assert "could not be re-scored" in decision.reason
        assert tracking.alias_version("norescore", tracking.CHAMPION) == v1
    assert (
        "registry unreachable"
        in tracking.decide_promotion("norescore", v2, "acc", 0.0, rescore=broken).reason
    )


def test_a_champion_without_the_metric_is_rescored(tmp_path: Path):
    """A new promotion metric: the champion has no tag for it, so it is scored, not skipped."""
    with tracking.run("registry-test", "baseline", params={}):
        uri = log_baseline_model(str(tmp_path / "config.json"))
    v1 = tracking.register_model(uri, "newmetric", {"acc": 0.5, "eval_data_hash": "h"}, "m1")
    assert tracking.promote_if_better("newmetric", v1, "acc", 0.0).promoted
    v2 = tracking.register_model(
        uri, "newmetric", {"acc": 0.5, "loss_neg": -0.9, "eval_data_hash": "h"}, "m2"
    )
    decision = tracking.promote_if_better("newmetric", v2, "loss_neg", 0.0, rescore=lambda u: -0.5)
    assert not decision.promoted and decision.champion_value == -0.5
    assert tracking.alias_version("newmetric", tracking.CHAMPION) == v1
