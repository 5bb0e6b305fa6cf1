"""The register stages and ``fetal promote`` on synthetic files of the contract's shape.

``register_ctg`` reads ``evaluate_ctg``'s every-family out-of-fold predictions and figures,
``register_us`` the trainers' per-item files and reports; both register through
``register(spec)``, twice-run registers once; ``fetal promote`` moves nothing when ``dvc push``
fails (and says so), then decides in order: the CTG baseline first, each family against the
champion of the moment (replayed here with DeLong).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.cli import main as fetal
from stages.common.ml.paired import delong_test
from stages.common.registry import champion, promotion, tracking
from tests.conftest import ROOT, dvc_bin
from tests.synth_registry import oof_items

pytestmark = pytest.mark.integration

# family -> (AUC, noise seed): lstm worse than the baseline, gbm clearly better, hybrid = gbm
FAMILIES = {"logistic": (0.70, 1), "lstm": (0.62, 1), "gbm": (0.85, 1), "hybrid": (0.851, 1)}


def ctg_project(root: Path) -> pd.DataFrame:
    """A project at ``root`` holding what ``register_ctg`` reads; the out-of-fold table."""
    shutil.copy2(ROOT / "params.yaml", root / "params.yaml")
    oof = pd.DataFrame({"record": [f"{1001 + i}" for i in range(400)], "fold": np.arange(400) % 5})
    figures = {}
    for family, (auc, seed) in FAMILIES.items():
        items = oof_items(auc, noise_seed=seed)
        oof["y"], oof[family] = items["y"], items["pred"]
        ev = promotion.Evaluation(items, "cv_auc", method="delong")
        figures[family] = {
            "auc": promotion.own_score(ev),
            "auc_ci_low": 0.5,
            "auc_ci_high": 0.9,
            "sensitivity": 0.6,
            "specificity": 0.7,
            "threshold": 0.4,
            "n_pos": int(items["y"].sum()),
            "n_neg": int((items["y"] == 0).sum()),
        }
        folder = root / (
            "data/models/ctg" if family == "lstm" else f"data/models/ctg_families/{family}"
        )
        folder.mkdir(parents=True)
        (folder / "family.json").write_text(json.dumps({"family": family}))  # fmt: skip
    (root / "data/reports/evaluate_ctg").mkdir(parents=True)
    oof.to_csv(root / "data/reports/evaluate_ctg/oof_predictions.csv", index=False)
    (root / "data/reports/evaluate_ctg.json").write_text(json.dumps({"families": figures}))
    return oof


def us_project(root: Path) -> None:
    """What ``register_us`` reads: the segmenter's oof.csv, the val items, reports, folders."""
    shutil.copy2(ROOT / "params.yaml", root / "params.yaml")
    rng = np.random.default_rng(0)
    reports = root / "data/reports"
    (reports / "train_segmenter_us").mkdir(parents=True)
    names = [f"{i // 2:03d}_{'2' if i % 2 else ''}HC" for i in range(40)]
    err = rng.normal(0, 3, 40)
    err[5] = np.nan  # no ellipse: counts as its whole circumference
    pd.DataFrame({"image": names, "fold": np.arange(40) % 5, "dice": 0.95, "hc_mm": 200.0,
                  "hc_error_mm": err, "hc_true_mm": rng.uniform(100, 300, 40)}).to_csv(
        reports / "train_segmenter_us/oof.csv", index=False)  # fmt: skip
    for stage, n_pred in (("train_plane_classifier_us", 3), ("train_autoencoder_us", 0)):
        (reports / stage).mkdir(exist_ok=True)
        items = pd.DataFrame({"item": [f"img{i}" for i in range(30)], "cluster": np.arange(30) // 2,
                              "y": np.arange(30) % (n_pred or 2)})  # fmt: skip
        pred = rng.dirichlet(np.ones(3), 30) if n_pred else rng.random(30)
        promotion.with_predictions(items, pred).to_csv(reports / stage / "val_items.csv",
                                                        index=False)  # fmt: skip
    facts = {
        "train_segmenter_us": {"n_images": 40, "n_folds": 5, "oof_hc_error_mm_median": 1.5,
                               "oof_dice_mean": 0.95, "oof_n_no_ellipse": 1},
        "train_plane_classifier_us": {"n_train": 100, "n_val": 30, "best_epoch": 7,
                                      "val_accuracy": 0.7},
        "train_autoencoder_us": {"n_train": 100, "val_mse": 0.01, "threshold": 4.5},
    }  # fmt: skip
    for stage, report in facts.items():
        (reports / f"{stage}.json").write_text(json.dumps(report))
    for folder in ("segmenter/final", "plane_classifier", "autoencoder"):
        (root / "data/models/us" / folder).mkdir(parents=True)
        (root / "data/models/us" / folder / "config.json").write_text(json.dumps({"k": folder}))


def dvc_repo(root: Path, remote: Path) -> None:
    """``root`` as a DVC project (no git) with something cached to push to ``remote``."""
    for args in (["init", "--no-scm", "-q"], ["remote", "add", "-d", "r", str(remote)],
                 ["add", "-q", "data/models"]):  # fmt: skip
        subprocess.run([dvc_bin(), *args], cwd=root, check=True, capture_output=True)


def test_register_ctg_then_promote_after_a_push(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from stages.ctg.pipeline import register as register_ctg

    root = tmp_path / "project"
    root.mkdir()
    oof = ctg_project(root)
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(root))
    register_ctg.main()
    report = json.loads((root / "data/reports/register_ctg.json").read_text())
    rows = report["models"]
    assert [r["family"] for r in rows] == ["logistic", "lstm", "gbm", "hybrid"]  # baseline first
    assert [r["version"] for r in rows] == ["1", "2", "3", "4"]
    assert all(len(r["key"]) == 64 and r["ci_low"] < r["value"] < r["ci_high"] for r in rows)
    assert rows[0]["value"] == pytest.approx(0.70, abs=0.04) and rows[0]["margin"] == 0.005
    assert tracking.alias_version("ctg-distress", "champion") is None  # registration only
    card = tracking.client().get_model_version("ctg-distress", "3").description
    assert "Family `gbm`" in card and f"cv_auc: {rows[2]['value']:.4f}" in card
    register_ctg.main()  # the stage run twice registers once
    assert json.loads((root / "data/reports/register_ctg.json").read_text()) == report
    assert len(tracking.compare_versions("ctg-distress")) == 4

    # the push fails (unreachable remote): no champion moves, the comparison says why
    dvc_repo(root, Path("/proc/no-such-remote"))
    assert fetal(["promote", "--repo", str(root)]) == 3
    out = capsys.readouterr().out
    assert "dvc push failed" in out and "PROMOTED" not in out
    assert "dvc push failed" in (root / "data/reports/registry_comparison.md").read_text()
    assert tracking.alias_version("ctg-distress", "champion") is None

    subprocess.run([dvc_bin(), "remote", "modify", "r", "url", str(tmp_path / "remote")],
                   cwd=root, check=True)  # fmt: skip
    assert fetal(["promote", "--repo", str(root)]) == 0
    assert any((tmp_path / "remote").rglob("*"))  # pushed before deciding
    # the champion by the paired rule, replayed in registration order on the same records
    y, best = oof["y"].to_numpy(), None
    for family in ["logistic", "lstm", "gbm", "hybrid"]:
        if best is not None:
            d = delong_test(y, oof[best].to_numpy(), oof[family].to_numpy())
            if not (d.difference >= 0.005 and d.ci_low > 0):
                continue
        best = family
    assert best == "gbm"
    assert tracking.alias_version("ctg-distress", "champion") == "3"
    moves = [(e["from"], e["to"]) for e in champion.champion_history("ctg-distress")]
    assert moves == [(None, "1"), ("1", "3")]
    comparison = capsys.readouterr().out
    assert "PROMOTED none -> v1" in comparison and "PROMOTED v1 -> v3" in comparison
    assert fetal(["promote", "--repo", str(root)]) == 0  # again: nothing moves
    assert len(champion.champion_history("ctg-distress")) == 2


def test_register_ctg_refuses_figures_that_disagree_with_the_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from stages.ctg.pipeline import register as register_ctg

    ctg_project(tmp_path)
    path = tmp_path / "data/reports/evaluate_ctg.json"
    figures = json.loads(path.read_text())
    figures["families"]["gbm"]["auc"] += 0.01
    path.write_text(json.dumps(figures))
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(tmp_path))
    with pytest.raises(ValueError, match="family gbm: oof_predictions.csv gives AUC"):
        register_ctg.main()


def test_register_us_registers_three_models_with_their_clusters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from stages.ultrasound.pipeline import register as register_us

    us_project(tmp_path)
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(tmp_path))
    register_us.main()
    rows = json.loads((tmp_path / "data/reports/register_us.json").read_text())["models"]
    names = ["us-head-segmenter", "us-plane-classifier", "us-brain-autoencoder"]
    assert [r["name"] for r in rows] == names and {r["version"] for r in rows} == {"1"}
    seg = tracking.version_evaluation("us-head-segmenter", "1")
    assert seg is not None and seg.items["cluster"].nunique() == 20  # examinations
    oof = pd.read_csv(tmp_path / "data/reports/train_segmenter_us/oof.csv")
    expected = np.where(oof["hc_error_mm"].isna(), oof["hc_true_mm"], oof["hc_error_mm"].abs())
    assert rows[0]["value"] == pytest.approx(-expected.mean())  # minus the mean |HC error|
    card = tracking.client().get_model_version("us-head-segmenter", "1").description
    assert f"oof_hc_error_mm_mean: {expected.mean():.4f} (95 % interval" in card
    assert "40 HC18 images" in card and "5-fold" in card
    planes = tracking.version_evaluation("us-plane-classifier", "1")
    assert planes is not None and planes.score == "log_loss_neg"
    assert list(promotion.pred_columns(planes.items)) == ["pred.0", "pred.1", "pred.2"]
    assert tracking.alias_version("us-brain-autoencoder", "champion") is None
    register_us.main()
    assert all(len(tracking.compare_versions(n)) == 1 for n in names)
