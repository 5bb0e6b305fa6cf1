"""A tiny two-branch DVC pipeline for flow mechanics tests (seconds, not minutes).

``install_toy_pipeline(repo)`` replaces a toy repository's ``dvc.yaml``/``params.yaml`` with five
trivial stages (``prep_ctg -> train_ctg -> evaluate_ctg`` and ``prep_us -> train_us``) run by
``toy_stage.py``. ``train_ctg`` registers a real (baseline) pyfunc model as ``toy-ctg`` through
the real training stages' path (signature, model card, synthetic out-of-fold predictions of about
AUC ``score``) and decides its promotion in the stage, as they do. Each stage
records its start and end times, so tests can check the branches overlapped.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

TOY_STAGE = '''
"""Trivial stages for flow tests: python toy_stage.py STAGE."""
import json, os, sys, time
from pathlib import Path

import yaml

stage = sys.argv[1]
p = yaml.safe_load(Path("params.yaml").read_text())[stage]
t0 = time.time()
Path("data/times").mkdir(parents=True, exist_ok=True)
marker = Path("data/times") / f"{stage}.started"
marker.write_text(str(t0))
time.sleep(float(p.get("sleep_s", 0)))


def write(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


if p.get("fail"):
    sys.exit(f"{stage}: failing on purpose")
if stage.startswith("prep"):
    write(f"data/{stage}.json", {"value": p["value"]})
elif stage == "train_ctg":
    import numpy as np
    import pandas as pd
    from scipy.stats import norm

    from stages.common.registry import tracking
    from stages.common.registry.promotion import score_interval
    from stages.ctg.models.registration import SIGNATURE, card_facts, oof_evaluation

    ehash = tracking.data_hash(["data/prep_ctg.json"])
    key = f"{ehash}-{p['score']}"
    # out-of-fold predictions of about AUC `score`: same records, labels and noise every run
    n = int(p.get("n_records", 400))
    y = np.random.default_rng(0).random(n) < 0.25
    noise = np.random.default_rng(1).normal(size=n)
    prob = 1 / (1 + np.exp(-(noise + y * np.sqrt(2) * norm.ppf(p["score"]))))
    oof = pd.DataFrame({"record": [f"r{i}" for i in range(n)], "label": y.astype(int),
                        "probability": prob})
    evaluation = oof_evaluation(oof, "cv_auc", 0)
    auc, low, high = score_interval(evaluation)
    report = {"cv_auc": auc, "n_records": n, "n_pos": int(y.sum()), "alert_threshold": 0.5}
    model_dir = Path("data/models/toy")
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"brady_bpm": 110.0, "alert_threshold": 0.5}))
    with tracking.run("toy", "train_ctg", params=p, stage="train_ctg"):
        decision = tracking.register_and_promote(
            model_dir, "flows.tasks:load_bradycardia_predictor", p["registered_name"],
            {"cv_auc": auc, "eval_data_hash": ehash, "data_version": f"sha:{ehash}",
             "metric_interval": f"[{low:.4f}, {high:.4f}]"},
            key, "cv_auc", p["promote_margin"], evaluation,
            card_facts(report, (low, high), f"sha:{ehash}"), signature=SIGNATURE,
        )
    # A kill here (after registering, before the outputs) must not add a version on rerun.
    time.sleep(float(p.get("sleep_after_register_s", 0)))
    write("data/reports/train_ctg.json", {**report, "decision": decision.to_dict()})
    write("data/models/ctg.json", {"version": decision.challenger_version, "score": p["score"]})
elif stage == "evaluate_ctg":
    model = json.loads(Path("data/models/ctg.json").read_text())
    write("data/reports/evaluate_ctg.json", {"auc": model["score"]})
elif stage == "train_us":
    prep = json.loads(Path("data/prep_us.json").read_text())
    write("data/models/us.json", {"value": prep["value"]})
write(f"data/times/{stage}.json", {"start": t0, "end": time.time()})
'''

PIPELINE = {
    "stages": {
        "prep_ctg": {
            "cmd": "python toy_stage.py prep_ctg",
            "deps": ["toy_stage.py"],
            "params": ["prep_ctg"],
            "outs": ["data/prep_ctg.json"],
        },
        "train_ctg": {
            "cmd": "python toy_stage.py train_ctg",
            "deps": ["toy_stage.py", "data/prep_ctg.json"],
            "params": ["train_ctg"],
            "outs": ["data/models/ctg.json", "data/models/toy"],
            "metrics": [{"data/reports/train_ctg.json": {"cache": False}}],
        },
        "evaluate_ctg": {
            "cmd": "python toy_stage.py evaluate_ctg",
            "deps": ["toy_stage.py", "data/models/ctg.json"],
            "params": ["evaluate_ctg"],
            "metrics": [{"data/reports/evaluate_ctg.json": {"cache": False}}],
        },
        "prep_us": {
            "cmd": "python toy_stage.py prep_us",
            "deps": ["toy_stage.py"],
            "params": ["prep_us"],
            "outs": ["data/prep_us.json"],
        },
        "train_us": {
            "cmd": "python toy_stage.py train_us",
            "deps": ["toy_stage.py", "data/prep_us.json"],
            "params": ["train_us"],
            "outs": ["data/models/us.json"],
        },
    }
}

PARAMS = {
    "prep_ctg": {"value": 1, "sleep_s": 0},
    "train_ctg": {
        "score": 0.70,
        "registered_name": "toy-ctg",
        "promote_metric": "cv_auc",
        "promote_margin": 0.005,
        "sleep_s": 0,
        "sleep_after_register_s": 0,
    },
    "evaluate_ctg": {"fail": False},
    "prep_us": {"value": 2, "sleep_s": 0},
    "train_us": {"sleep_s": 0},
}


def install_toy_pipeline(repo: Path, remote: Path | None = None) -> None:
    """Write the toy pipeline into ``repo`` (a ``toy_repo``), commit it, add a local remote."""
    (repo / "toy_stage.py").write_text(TOY_STAGE)
    shutil.rmtree(repo / "sources", ignore_errors=True)  # the real source checks: not in the toy
    (repo / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    dvc = str(Path(__import__("sys").executable).parent / "dvc")
    if remote is not None:
        subprocess.run(
            [dvc, "remote", "add", "-f", "-d", "local", str(remote)], cwd=repo, check=True
        )
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    import os

    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env={**os.environ, **env})
    subprocess.run(
        ["git", "commit", "-qm", "toy pipeline"], cwd=repo, check=True, env={**os.environ, **env}
    )
