"""A tiny two-branch DVC pipeline for flow mechanics tests (seconds, not minutes).

``install_toy_pipeline(repo)`` replaces a toy repository's ``dvc.yaml``/``params.yaml`` with six
trivial stages (``prep_ctg -> train_ctg -> evaluate_ctg -> register_ctg`` and
``prep_us -> train_us``) run by ``toy_stage.py``. ``train_ctg`` writes a model folder (the
registry tests' baseline), ``evaluate_ctg`` synthetic out-of-fold predictions of about AUC
``train_ctg.score`` in the real contract's shape, and ``register_ctg`` registers the folder as
``toy-ctg`` through the real API (``register(spec)``, the real report), as the real register
stage does; ``fetal promote`` or the flow then decides. Each stage records its start and end
times, so tests can check the branches overlapped.
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
    model_dir = Path("data/models/toy")
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"brady_bpm": 110.0, "alert_threshold": 0.5}))
    write("data/models/ctg.json", {"score": p["score"], "n_records": p["n_records"]})
elif stage == "evaluate_ctg":
    import numpy as np
    import pandas as pd
    from scipy.stats import norm

    model = json.loads(Path("data/models/ctg.json").read_text())
    # out-of-fold predictions of about AUC `score`: same records, labels and noise every run
    n = int(model["n_records"])
    y = np.random.default_rng(0).random(n) < 0.25
    noise = np.random.default_rng(1).normal(size=n)
    prob = 1 / (1 + np.exp(-(noise + y * np.sqrt(2) * norm.ppf(model["score"]))))
    oof = pd.DataFrame({"record": [f"r{i}" for i in range(n)], "fold": np.arange(n) % 3,
                        "y": y.astype(int), "toy": prob})
    Path("data/reports/evaluate_ctg").mkdir(parents=True, exist_ok=True)
    oof.to_csv("data/reports/evaluate_ctg/oof_predictions.csv", index=False)
    write("data/reports/evaluate_ctg.json", {"families": {"toy": {
        "n_pos": int(y.sum()), "n_neg": int(n - y.sum()), "threshold": 0.5,
        "sensitivity": float(np.mean(prob[y] >= 0.5)),
        "specificity": float(np.mean(prob[~y] < 0.5))}}})
elif stage == "register_ctg":
    import pandas as pd

    from stages.common.registry.promotion import Evaluation, score_interval
    from stages.common.registry.registration import ModelSpec, register, registration_report
    from stages.ctg.models.registration import SIGNATURE, card_facts, example_input

    oof = pd.read_csv("data/reports/evaluate_ctg/oof_predictions.csv", dtype={"record": str})
    figures = json.loads(Path("data/reports/evaluate_ctg.json").read_text())["families"]["toy"]
    items = pd.DataFrame({"item": oof["record"], "y": oof["y"], "pred": oof["toy"]})
    evaluation = Evaluation(items, p["promote_metric"], method="delong", n_bootstrap=200)
    card = card_facts(figures, score_interval(evaluation), "sha:toy", "logistic")
    spec = ModelSpec(p["registered_name"], Path("data/models/toy"),
                     "tests.synth_registry:load_bradycardia_predictor", "toy", evaluation,
                     p["promote_margin"], card, SIGNATURE, example_input(0.1),
                     {"data_version": "sha:toy"}, "register_ctg")
    registered = register(spec)
    # A kill here (after registering, before the report) must not add a version on rerun.
    time.sleep(float(p.get("sleep_after_register_s", 0)))
    write("data/reports/register_ctg.json", registration_report([registered]))
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
        },
        "evaluate_ctg": {
            "cmd": "python toy_stage.py evaluate_ctg",
            "deps": ["toy_stage.py", "data/models/ctg.json"],
            "params": ["evaluate_ctg"],
            "outs": ["data/reports/evaluate_ctg/oof_predictions.csv"],
            "metrics": [{"data/reports/evaluate_ctg.json": {"cache": False}}],
        },
        "register_ctg": {
            "cmd": "python toy_stage.py register_ctg",
            "always_changed": True,
            "deps": [
                "toy_stage.py",
                "data/reports/evaluate_ctg/oof_predictions.csv",
                "data/reports/evaluate_ctg.json",
                "data/models/toy",
            ],
            "params": ["register_ctg"],
            "outs": [{"data/reports/register_ctg.json": {"cache": False}}],
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
    "train_ctg": {"score": 0.70, "n_records": 400, "sleep_s": 0},
    "evaluate_ctg": {"fail": False},
    "register_ctg": {
        "registered_name": "toy-ctg",
        "promote_metric": "cv_auc",
        "promote_margin": 0.005,
        "sleep_after_register_s": 0,
    },
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
