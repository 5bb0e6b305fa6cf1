"""The training flow on a toy two-branch pipeline: real ``dvc repro`` and registry, Prefect API."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml

from flows import dvc_locks, training
from stages.common.registry import champion, tracking
from tests import import_graph as ig
from tests.conftest import ROOT, run_dvc, set_params
from tests.integration.toy_pipeline import install_toy_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def toy(toy_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    install_toy_pipeline(toy_repo, remote=tmp_path / "remote")
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(toy_repo))  # the flow's own project
    return toy_repo


def _artifact_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,  # the latest run's
            limit=1,
        )
    assert arts, f"no Prefect artifact with key {key}"
    return arts[0].data


def _dvc_project(root: Path, **stages: dict) -> Path:
    """A bare DVC project (no git) whose dvc.yaml declares ``stages`` in this order."""
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    Repo.init(str(root), no_scm=True).close()
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


@pytest.mark.unit
def test_stage_order_follows_data_dependencies_of_the_real_pipeline(tmp_path: Path):
    # both stage files in one (sources/dvc.yaml's wdir points at the root: drop it)
    stages = {
        n: {k: v for k, v in s.items() if k != "wdir"} for n, s in ig.pipeline_stages().items()
    }
    pipeline = {"stages": stages}
    repo = _dvc_project(tmp_path / "repo", **pipeline["stages"])
    shutil.copy2(ROOT / "params.yaml", repo / "params.yaml")
    order = training.stage_order(repo)
    assert sorted(order) == sorted(pipeline["stages"])
    pos = {s: i for i, s in enumerate(order)}
    for up, down in [
        ("ingest_ctg", "validate_ctg"),
        ("validate_ctg", "preprocess_ctg"),
        ("split_ctg", "train_ctg"),
        ("train_ctg", "evaluate_ctg"),
        ("enhance_us", "segment_us"),
        ("enhance_us", "train_segmenter_us"),
        ("train_segmenter_us", "segment_us"),
        ("train_segmenter_us", "train_plane_classifier_us"),
        ("segment_us", "split_planes_us"),
        ("train_plane_classifier_us", "evaluate_us"),
    ]:
        assert pos[up] < pos[down], (up, down, order)
    plan = training.branches(order)
    assert set(plan) == {"ctg", "us"}
    assert all(s.endswith("_ctg") for s in plan["ctg"])
    assert all(s.endswith("_us") for s in plan["us"])


@pytest.mark.unit
def test_stage_order_keeps_declaration_order_between_independent_stages(tmp_path: Path):
    # "late" is declared first but reads a folder "early" writes into: dependency wins;
    # "a" and "b" are independent: they keep their declaration order.
    repo = _dvc_project(
        tmp_path / "repo",
        late={"cmd": "true", "deps": ["data/x/file.txt"], "outs": ["data/late"]},
        b={"cmd": "true", "outs": ["data/b"]},
        a={"cmd": "true", "outs": ["data/a"]},
        early={"cmd": "true", "outs": ["data/x"]},
    )
    assert training.stage_order(repo) == ["b", "a", "early", "late"]


@pytest.mark.unit
def test_stage_order_rejects_a_cycle(tmp_path: Path):
    from dvc.exceptions import CyclicGraphError

    repo = _dvc_project(
        tmp_path / "repo",
        a={"cmd": "true", "deps": ["y"], "outs": ["x"]},
        b={"cmd": "true", "deps": ["x"], "outs": ["y"]},
    )
    with pytest.raises(CyclicGraphError):
        training.stage_order(repo)


@pytest.mark.unit
def test_only_this_machines_recorded_dead_dvc_locks_are_released(tmp_path: Path):
    import subprocess
    import sys

    lock_dir = tmp_path / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.05)  # ended, not yet reaped: what DVC takes for a live holder
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    elsewhere = subprocess.Popen([sys.executable, "-c", "pass"])
    elsewhere.wait()
    unrecorded = subprocess.Popen([sys.executable, "-c", "pass"])
    unrecorded.wait()
    for pid in (zombie.pid, gone.pid, elsewhere.pid, os.getpid()):
        dvc_locks.record_holder(tmp_path, pid)  # started by the flow on this machine...
    holders = tmp_path / dvc_locks.HOLDERS_DIR
    other = json.loads((holders / f"{elsewhere.pid}.json").read_text())
    other["machine"] = "another-host|boot|1"  # ...except this one: another host's dvc
    (holders / f"{elsewhere.pid}.json").write_text(json.dumps(other))
    live = {"pid": os.getpid(), "cmd": "dvc repro"}
    entry = {pid: {"pid": pid, "cmd": "dvc repro"} for pid in (zombie.pid, gone.pid)}
    kept = {pid: {"pid": pid, "cmd": "dvc repro"} for pid in (elsewhere.pid, unrecorded.pid)}
    (lock_dir / "rwlock").write_text(
        json.dumps(
            {
                "write": {"data/a": entry[zombie.pid], "data/b": live,
                          "data/e": kept[elsewhere.pid]},
                "read": {"data/c": [entry[gone.pid], live], "data/d": [kept[unrecorded.pid]]},
            }
        )
    )  # fmt: skip
    try:
        assert dvc_locks.release_stale_dvc_locks(tmp_path) == sorted([zombie.pid, gone.pid])
    finally:
        zombie.wait()
    lock = json.loads((lock_dir / "rwlock").read_text())
    # a PID another machine wrote, or no record of ours vouches for, may be alive elsewhere
    assert lock == {
        "write": {"data/b": live, "data/e": kept[elsewhere.pid]},
        "read": {"data/c": [live], "data/d": [kept[unrecorded.pid]]},
    }
    assert not (holders / f"{gone.pid}.json").exists()  # released: its record goes too


@pytest.mark.unit
def test_the_flow_runs_only_its_own_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(tmp_path))
    assert training.training_root(None) == tmp_path.resolve()
    assert training.training_root(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(ValueError, match="refused"):
        training.training_root("/")  # e.g. a flow run created over the Prefect API


def test_training_flow_reproduces_pushes_then_promotes(toy: Path, prefect_api):
    set_params(toy, {"prep_ctg": {"sleep_s": 2}, "prep_us": {"sleep_s": 2}})
    out = training.training_flow(repo=str(toy), retries=0)

    # every stage ran once, through DVC: dvc.lock holds the lineage of all six
    stages = set(yaml.safe_load((toy / "dvc.yaml").read_text())["stages"])
    assert {s["stage"] for s in out["stages"]} == stages
    assert set(yaml.safe_load((toy / "dvc.lock").read_text())["stages"]) == stages
    # the CTG and US branches overlapped in time (each prep sleeps 2 s)
    t = {s: json.loads((toy / f"data/times/{s}.json").read_text()) for s in ("prep_ctg", "prep_us")}
    overlap = min(t["prep_ctg"]["end"], t["prep_us"]["end"]) - max(
        t["prep_ctg"]["start"], t["prep_us"]["start"]
    )
    assert overlap > 0.5, t
    # registered by the stage, pushed, then promoted by the flow's promote task
    assert tracking.alias_version("toy-ctg", "champion") == "1"
    row = out["decisions"][0]
    assert row["promoted"] is True and row["champion_before"] == "none"
    assert row["champion_after"] == "v1" and row["reason"] == "no champion yet"
    assert "PROMOTED" in _artifact_markdown("registry-comparison")
    assert any(p.is_file() for p in (toy.parent / "remote").rglob("*"))  # dvc push happened
    assert champion.champion_history("toy-ctg")[0]["stage"] == "training flow"

    # nothing changed: only the register stage runs (always), registering nothing new
    again = training.training_flow(repo=str(toy), retries=0)
    assert {s["stage"] for s in again["stages"] if s["ran"]} == {"register_ctg"}
    assert len(tracking.compare_versions("toy-ctg")) == 1
    assert again["decisions"][0]["decision"] == "kept champion"

    # a challenger better by less than the margin (about 0.003 < 0.005): registered, kept out
    set_params(toy, {"train_ctg": {"score": 0.703}})
    out = training.training_flow(repo=str(toy), retries=0)
    ran = {s["stage"] for s in out["stages"] if s["ran"]}
    assert ran == {"train_ctg", "evaluate_ctg", "register_ctg"}  # only what changed
    assert tracking.alias_version("toy-ctg", "challenger") == "2"
    assert tracking.alias_version("toy-ctg", "champion") == "1"
    row = out["decisions"][0]
    assert "below the margin" in row["reason"] and "DeLong" in row["paired_difference"]
    assert row["champion_before"] == row["champion_after"] == "v1" and not row["promoted"]

    # clearly better: promoted v1 -> v3, with the figures
    set_params(toy, {"train_ctg": {"score": 0.9}})
    out = training.training_flow(repo=str(toy), retries=0)
    row = out["decisions"][0]
    assert tracking.alias_version("toy-ctg", "champion") == "3"
    assert row["decision"] == "PROMOTED v1 -> v3" and "DeLong" in row["paired_difference"]
    assert [(m["from"], m["to"]) for m in row["moves"]] == [("1", "3")]
    assert row["moves"][0]["n"] == 400 and row["moves"][0]["ci"][0] > 0
    art = _artifact_markdown("registry-comparison")
    assert "Champion moves in this run" in art and "v1 -> v3" in art

    # every version explains itself: card numbers = the register report; same input schema
    import mlflow

    reg = json.loads((toy / "data/reports/register_ctg.json").read_text())["models"][0]
    assert reg["version"] == "3" and len(reg["key"]) == 64
    card = tracking.client().get_model_version("toy-ctg", "3").description
    assert f"cv_auc: {reg['value']:.4f} (95 % interval {reg['ci_low']:.4f}" in card
    assert "size: 400 records" in card and "not a diagnosis" in card
    schemas = {
        v: mlflow.models.get_model_info(f"models:/toy-ctg/{v}").signature for v in ("1", "3")
    }
    assert schemas["1"].inputs == schemas["3"].inputs
    assert schemas["1"].inputs.input_names() == ["fhr_bpm", "uc", "fs_hz"]

    # the remote is unreachable: the better model is registered, the push fails, nothing moves,
    # and the comparison still says what happened
    run_dvc(toy, "remote", "modify", "local", "url", "/proc/no-such-remote")
    set_params(toy, {"train_ctg": {"score": 0.97}})
    with pytest.raises(Exception, match="dvc push failed"):
        training.training_flow(repo=str(toy), retries=0)
    assert tracking.alias_version("toy-ctg", "challenger") == "4"
    assert tracking.alias_version("toy-ctg", "champion") == "3"
    report = (toy / "data/reports/registry_comparison.md").read_text()
    assert "dvc push failed" in report and "PROMOTED" not in report
    assert "dvc push failed" in _artifact_markdown("registry-comparison")


def test_failed_training_stage_promotes_nothing_and_champion_stays(toy: Path, prefect_api):
    training.training_flow(repo=str(toy), retries=0)
    assert tracking.alias_version("toy-ctg", "champion") == "1"
    # a much better model is configured, but its training stage fails: nothing is decided
    set_params(toy, {"train_ctg": {"score": 0.95, "fail": True}})
    with pytest.raises(Exception, match="train_ctg"):
        training.training_flow(repo=str(toy), retries=0)
    assert tracking.alias_version("toy-ctg", "champion") == "1"
    assert len(tracking.compare_versions("toy-ctg")) == 1
    report = (toy / "data/reports/registry_comparison.md").read_text()
    assert "not decided" in report and "train_ctg" in report
    # training fixed: the rerun registers and promotes the better model
    set_params(toy, {"train_ctg": {"fail": False}})
    out = training.training_flow(repo=str(toy), retries=0)
    assert tracking.alias_version("toy-ctg", "champion") == "2"
    assert out["decisions"][0]["champion_before"] == "v1"


# --------------------------------------------------------------------------- monitoring


def _champion_baseline(tmp_path: Path, name: str = "toy-ctg-monitor") -> str:
    from tests.synth_registry import log_baseline_model

    with tracking.run("monitor-test", "baseline"):
        uri = log_baseline_model(str(tmp_path / "config.json"))
    v = tracking.register_model(uri, name, {"cv_auc": 0.5, "eval_data_hash": "h"}, "k")
    champion.promote_if_better(name, v, "cv_auc", 0.0)
    return f"models:/{name}@champion"


@pytest.mark.unit
def test_window_ends_and_crossings():
    from flows.monitor import crossings, window_ends

    assert window_ends(4 * 60 * 9, 4.0, 10, 5) == []
    assert window_ends(4 * 60 * 22, 4.0, 10, 5) == [10, 15, 20]
    assert list(crossings(np.array([0.1, 0.6, 0.7, 0.2, 0.9]), 0.5)) == [1, 4]


def test_monitor_follows_a_replayed_recording_and_alerts(tmp_path: Path, prefect_api):
    import threading

    from flows import monitor, replay
    from tests.synth_ctg import write_ctg_record

    # 60 min at 4 Hz: normal (140 bpm) then bradycardia (95 bpm) from minute 32
    rng = np.random.default_rng(0)
    n = 60 * 60 * 4
    fhr_bpm = 140 + rng.normal(0, 3, n)
    fhr_bpm[32 * 240 :] = 95 + rng.normal(0, 3, n - 32 * 240)
    fhr_bpm[5 * 240 : 6 * 240] = 300.0  # minute 5: an implausible chunk, kept as signal loss
    uc = np.clip(20 + rng.normal(0, 2, n), 0, 100)
    write_ctg_record(tmp_path / "rec", "2001", np.round(fhr_bpm * 4) / 4, uc, ph=7.0)
    uri = _champion_baseline(tmp_path)
    live = tmp_path / "live"

    feeder = threading.Thread(
        target=replay.main, args=([str(tmp_path / "rec" / "2001"), str(live), "--speed", "600"],)
    )
    feeder.start()
    result = monitor.monitor_flow(
        str(live), model_uri=uri, threshold=0.5, window_min=10, step_min=5, poll_s=0.2,
        idle_timeout_s=30,
    )  # fmt: skip
    feeder.join()

    timeline = pd.read_csv(result["timeline"])
    assert list(timeline["t_end_min"]) == [float(t) for t in range(10, 61, 5)]
    assert result["alerts_min"] == [40.0]  # window 30-40 min is 80 % bradycardia
    assert (timeline["probability"][timeline["t_end_min"] <= 30] < 0.5).all()
    assert (timeline["probability"][timeline["t_end_min"] >= 45] > 0.9).all()
    assert result["bad_chunks"] == ["chunk_00005.csv"]
    assert timeline["fhr_loss_frac"].iloc[0] == pytest.approx(0.1, abs=0.01)
    assert "40 min" in _artifact_markdown("labour-alert")
