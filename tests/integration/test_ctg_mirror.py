"""Smoke run of the CTG branch (ingest .. evaluate) with real ``dvc repro`` on the real mirror.

Five folds as in ``params.yaml`` (fewer would change what the printed AUC means) but a small
network trained for 1 epoch in batches of 32, so it finishes in CI: the AUC it prints is a SMOKE
number, not the model's performance (see ``data/reports/train_ctg.json`` of a full
``make pipeline``). Per fold, most of the time is the network's build and its out-of-fold
prediction, not the epochs: 2 epochs in batches of 8 took 1.5x as long and printed the same
smoke AUC (0.57 against 0.56).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ci_report, run_dvc, set_params, shared_mirror

pytestmark = [pytest.mark.integration, pytest.mark.mirror]


def test_ctg_branch_on_real_mirror(toy_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = shared_mirror("ctu-uhb")
    monkeypatch.setenv("FETAL_MIRROR", str(mirror.parent))
    set_params(
        toy_repo,
        {
            "train_ctg": {
                "epochs": 1,
                "batch_size": 32,
                "patience": 2,
                "units": 16,
                "conv_filters": 16,
            },
            "evaluate_ctg": {"n_bootstrap": 200},
        },
    )
    run_dvc(toy_repo, "repro", "evaluate_ctg", timeout=600)
    train = json.loads((toy_repo / "data/reports/train_ctg.json").read_text())
    ev = json.loads((toy_repo / "data/reports/evaluate_ctg.json").read_text())
    run = json.loads((toy_repo / "data/runs/train_ctg.json").read_text())
    ci_report(
        "ctg_mirror",
        "CTG branch on the real mirror, SMOKE RUN (1 epoch, small network, 5 folds): "
        "not the model's real performance\n"
        + (toy_repo / "data/reports/evaluate_ctg/metrics.md").read_text()
        + f"\nsmoke: lstm AUC {ev['lstm.auc']:.3f} [{ev['lstm.auc_ci_low']:.3f}, "
        f"{ev['lstm.auc_ci_high']:.3f}], FIGO baseline AUC {ev['logistic.auc']:.3f}, "
        f"signal loss AUC {ev['signal_loss.auc']:.3f}, {run['mean_epoch_s']:.1f} s/epoch",
    )
    assert len(train["fold"]) == 5
    assert ev["n_records"] >= 400 and ev["lstm.n_pos"] >= 70
    # The FIGO baseline is deterministic and known to carry signal on this data.
    assert ev["logistic.auc"] > 0.6
    assert 0.0 <= ev["lstm.auc"] <= 1.0
