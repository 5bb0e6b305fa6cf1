"""Tracked outputs are pure functions of deps and params; metrics and plots live in git.

- The data stages, run twice from the same synthetic mirror in two project folders, write
  byte-identical DVC outputs (a wall time, a timestamp or an absolute path would differ).
- Every metric and plot ``dvc.yaml`` declares is visible to git (``git check-ignore``), every
  cached output and the run reports are not.
- No declared metric file holds operational keys (seconds, bytes, paths, sources, versions).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import import_graph as ig
from tests.conftest import ROOT, set_params
from tests.synth_ctg import make_ctg_mirror
from tests.synth_us import make_us_mirror

pytestmark = pytest.mark.integration

PIPELINE = ig.pipeline_stages(ROOT)
CTG_STAGES = {"ingest": "ingest_ctg", "validate": "validate_ctg", "preprocess": "preprocess_ctg"}
CTG_STAGES |= {"split": "split_ctg", "featurize": "featurize_ctg"}
US_STAGES = {"ingest": "ingest_us", "validate": "validate_us", "enhance": "enhance_us"}
US_STAGES |= {"segment": "segment_us"}


def declared(stage: str, *kinds: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(path, options)`` of a dvc.yaml stage's outputs of the given kinds."""
    for kind in kinds:
        for item in PIPELINE[stage].get(kind, []):
            path = item if isinstance(item, str) else next(iter(item))
            yield path, ({} if isinstance(item, str) else item[path] or {})


def tracked_files(root: Path, stages: list[str]) -> dict[str, bytes]:
    """Every file under the stages' declared outs, metrics and plots, by relative path."""
    files: dict[str, bytes] = {}
    for stage in stages:
        for rel, _ in declared(stage, "outs", "metrics", "plots"):
            path = root / rel
            assert path.exists(), f"{stage} did not write {rel}"
            for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if f.is_file():
                    files[str(f.relative_to(root))] = f.read_bytes()
    return files


def _run_twice(tmp_path, monkeypatch, mirror: Path, package: str, stages: dict[str, str]):
    outputs = []
    for run in ("first", "second"):
        root = tmp_path / run / "project"  # two folders: an absolute path in an output shows
        root.mkdir(parents=True)
        shutil.copy2(ROOT / "params.yaml", root / "params.yaml")
        # no trained U-Net here; a dozen records need fewer than 5 hashed folds
        set_params(root, {"segment_us": {"method": "classical"}, "split_ctg": {"n_folds": 3}})
        monkeypatch.setenv("FETAL_PROJECT_ROOT", str(root))
        monkeypatch.setenv("FETAL_MIRROR", str(mirror))
        for module in stages:
            importlib.import_module(f"stages.{package}.pipeline.{module}").main()
        outputs.append(tracked_files(root, list(stages.values())))
    first, second = outputs
    assert sorted(first) == sorted(second)
    differ = [rel for rel in first if first[rel] != second[rel]]
    assert not differ, f"tracked outputs differ between two identical runs: {differ}"
    return first


def test_ctg_data_stages_write_identical_outputs_twice(tmp_path, monkeypatch) -> None:
    mirror = make_ctg_mirror(tmp_path / "mirror", n_records=12, seed=5)
    files = _run_twice(tmp_path, monkeypatch, mirror.parent, "ctg", CTG_STAGES)
    assert "data/processed/ctg/sequences.npz" in files  # npz zip entries carried the time
    run = json.loads((tmp_path / "second/project/data/runs/ingest_ctg.json").read_text())
    assert run["source"] == str(mirror) and "seconds" in run  # the run report keeps them


def test_us_data_stages_write_identical_outputs_twice(tmp_path, monkeypatch) -> None:
    mirror = make_us_mirror(tmp_path / "mirror", n_per_plane=1, n_hc18=3, seed=3)
    files = _run_twice(tmp_path, monkeypatch, mirror, "ultrasound", US_STAGES)
    assert any(rel.endswith(".npz") for rel in files)
    assert (tmp_path / "second/project/data/runs/gx/us").is_dir()  # Data Docs: untracked


# --------------------------------------------------------------------------- git and metrics


def _git_ignored(rel: str) -> bool:
    proc = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT, capture_output=True)
    if proc.returncode not in (0, 1):
        pytest.skip(f"git check-ignore unavailable: {proc.stderr.decode().strip()}")
    return proc.returncode == 0


def _probe(rel: str) -> str:
    """The path itself for a file, a file inside it for a folder output (``figures``)."""
    return rel if Path(rel).suffix else f"{rel}/example.png"


def test_metrics_and_plots_are_committable_and_cached_outs_ignored() -> None:
    in_git, ignored = [], []
    for stage in PIPELINE:
        for rel, opts in declared(stage, "outs", "metrics", "plots"):
            if not rel.startswith("data/"):
                continue
            (in_git if opts.get("cache") is False else ignored).append(rel)
    assert "data/reports/evaluate_ctg.json" in in_git and "data/raw/ctu-uhb" in ignored
    assert not [rel for rel in in_git if _git_ignored(_probe(rel))]
    # cached outs must already be ignored, or dvc repro appends lines to .gitignore files
    assert [rel for rel in ignored if not _git_ignored(_probe(rel))] == []
    assert _git_ignored("data/runs/ingest_ctg.json") and _git_ignored("data/runs/gx/index.html")


def test_metrics_and_plots_are_cache_false_and_data_summaries_not_metrics() -> None:
    metrics = [m for s in PIPELINE for m in declared(s, "metrics")]
    plots = [p for s in PIPELINE for p in declared(s, "plots")]
    assert all(opts.get("cache") is False for _, opts in metrics)
    # plot data (CSV) lives in git; rendered images are cached outs, never in git
    images = [rel for rel, _ in plots if not Path(rel).suffix or rel.endswith(".png")]
    assert all(opts.get("cache") is False for rel, opts in plots if rel not in images)
    assert images and all(opts.get("cache") is not False for rel, opts in plots if rel in images)
    names = {Path(rel).stem for rel, _ in metrics}
    assert not names & {"ingest_ctg", "validate_ctg", "preprocess_ctg", "ingest_us", "validate_us"}
    assert not [rel for rel, _ in metrics + plots if "/gx" in rel]


# A key naming a duration, a size, a location, a host, a clock or a registry counter.
OPERATIONAL = re.compile(
    r"(^|[._])(s|ms|secs?|seconds|time|times|timestamp|date|created|bytes|path|paths|dir"
    r"|source|sources|host|hostname|version|decision)($|[._])"
)


def operational_keys(obj: Any, prefix: str = "") -> list[str]:
    """Flattened keys of ``obj`` that are operational, or whose value is an absolute path."""
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if OPERATIONAL.search(str(key)):
                found.append(name)
            else:
                found += operational_keys(value, f"{name}.")
    elif isinstance(obj, str) and re.match(r"^(/|[A-Za-z]:\\)", obj):
        found.append(prefix.rstrip("."))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += operational_keys(value, f"{prefix}{i}.")
    return found


def test_operational_key_detector() -> None:
    old_ingest = {"n_records": 3, "seconds": 1.2, "bytes_transferred": 9, "source": "/m/ctu"}
    assert sorted(operational_keys(old_ingest)) == ["bytes_transferred", "seconds", "source"]
    train = {"cv_auc": 0.7, "mean_epoch_s": 2.0, "fold": {"0": {"auc": 0.6, "fold_s": 3.0}}}
    assert operational_keys(train) == ["mean_epoch_s", "fold.0.fold_s"]
    assert operational_keys({"failed": ["/abs/x.png: bad"]}) == ["failed.0"]
    good = {"lstm.auc": 0.7, "lstm.auc_ci_low": 0.6, "n_pos": 3, "oof_hc_error_mm_mean": 2.6}
    assert operational_keys(good | {"plane_accuracy": 0.78, "threshold_rule": "youden"}) == []


@pytest.mark.parametrize(
    "rel", sorted({rel for s in PIPELINE for rel, _ in declared(s, "metrics")})
)
def test_committed_metric_file_has_no_operational_keys(rel: str) -> None:
    path = ROOT / rel
    if not path.is_file():
        pytest.skip(f"{rel} not in this checkout (written by a full dvc repro)")
    assert operational_keys(json.loads(path.read_text())) == []
