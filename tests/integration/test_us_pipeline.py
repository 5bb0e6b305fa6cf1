"""The real ``dvc repro evaluate_us`` on a toy copy of the repo and a tiny synthetic mirror."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import run_dvc, set_params
from tests.synth_us import make_us_mirror

TINY = {
    "train_segmenter_us": {
        # seconds per network; enough to find the phantom heads (batch norm with batches of
        # 1-3 images left most of them unfound)
        "n_folds": 2,
        "batch_norm": False,
        "coarse": {
            "input_height": 32,
            "input_width": 48,
            "filters": [8, 16, 16],
            "epochs": 40,
            "learning_rate": 0.003,
            "batch_size": 4,
        },
        "fine": {
            "n_radii": 16,
            "n_angles": 32,
            "wrap_px": 4,
            "filters": [8, 16, 16],
            "epochs": 40,
            "learning_rate": 0.003,
            "batch_size": 4,
        },
    },
    # the learned segmenter end to end (fold models for HC18, the final one for the rest)
    "segment_us": {"method": "unet"},
    "us_crops": {"crop_px": 32},
    "train_autoencoder_us": {"filters": [4, 8, 8], "epochs": 2, "batch_size": 8},
    "train_plane_classifier_us": {"epochs": 2, "batch_size": 8},
    "evaluate_us": {"n_bootstrap": 20},
    "split_planes_us": {"val_fraction": 0.3},
}


@pytest.mark.integration
@pytest.mark.slow
def test_dvc_repro_evaluate_us(toy_repo, tmp_path, monkeypatch) -> None:
    mirror = make_us_mirror(tmp_path / "mirror", n_per_plane=6, seed=1, n_hc18=3)
    # Older synth_us wrote "np.float64(x)" into the HC18 CSV; keep the file in the real format.
    hc_csv = mirror / "hc18" / "pixel_size_and_HC.csv"
    hc_csv.write_bytes(re.sub(rb"np\.float64\(([^)]*)\)", rb"\1", hc_csv.read_bytes()))
    monkeypatch.setenv("FETAL_MIRROR", str(mirror))
    set_params(toy_repo, TINY)
    run_dvc(toy_repo, "repro", "register_us", timeout=900)
    # dvc.yaml code deps are the import closure: editing a plotting helper or the scoring CLI
    # leaves the U-Net (37 of the full pipeline's 47 minutes) up to date
    for helper in (
        "stages/common/ml/plots.py",
        "stages/ultrasound/figures.py",
        "stages/ultrasound/serving/score.py",
    ):
        with open(toy_repo / helper, "a", encoding="utf-8") as fh:
            fh.write("\n# an edit\n")
    status = run_dvc(toy_repo, "status", "train_segmenter_us").stdout
    assert "changed" not in status, status

    # the segmenter: examination-disjoint folds, one pair per fold, the final ensemble of them
    folds = pd.read_csv(toy_repo / "data/processed/us/segmenter_folds.csv", dtype={"exam": str})
    assert folds.groupby("exam")["fold"].nunique().max() == 1 and set(folds["fold"]) == {0, 1}
    seg_models = toy_repo / "data/models/us/segmenter"
    for sub, members in (("fold_0", [0]), ("fold_1", [0]), ("final", [0, 1])):
        config = json.loads((seg_models / sub / "config.json").read_text())
        assert config["members"] == members, sub
        for m in members:
            assert (seg_models / sub / f"coarse_{m}.keras").is_file(), sub
    assert not list(seg_models.rglob("*.pkl"))
    seg_report = json.loads((toy_repo / "data/reports/train_segmenter_us.json").read_text())
    assert seg_report["n_images"] == len(folds) and "oof_hc_error_mm_mean" in seg_report
    assert 0 <= seg_report["oof_flag_rate"] <= 1 and "oof_accepted_hc_error_mm_mean" in seg_report
    oof = pd.read_csv(toy_repo / "data/reports/train_segmenter_us/oof.csv")
    assert {"flagged", "flag_reason", "coarse_contrast", "ray_spread"} <= set(oof.columns)
    assert (oof["flag_reason"].fillna("") != "").eq(oof["flagged"]).all()  # a flag says why
    seg = json.loads((toy_repo / "data/reports/segment_us.json").read_text())
    method = seg["method"]
    assert method == "unet" and seg["hc18_out_of_fold"] and seg["n_no_ellipse"] < seg["n"] / 2

    manifest = pd.read_csv(toy_repo / "data/processed/us/planes_manifest.csv")
    assert manifest.groupby("patient")["split"].nunique().max() == 1
    assert {"train", "test"} <= set(manifest["split"])
    for folder in ("autoencoder", "plane_classifier"):
        model_dir = toy_repo / "data/models/us" / folder
        assert (model_dir / "model.keras").is_file()
        config = json.loads((model_dir / "config.json").read_text())
        assert config["input_size"] == 32
        assert not list(model_dir.rglob("*.pkl"))
        # method unet: the final segmenter travels with the model (score-us crops with it)
        assert (model_dir / "segmenter" / "config.json").is_file() == (method == "unet")
    ae_report = json.loads((toy_repo / "data/reports/train_autoencoder_us.json").read_text())
    assert ae_report["val_mse"] > 0 and "epoch_times_s" not in ae_report  # times: data/runs/
    ae_run = json.loads((toy_repo / "data/runs/train_autoencoder_us.json").read_text())
    assert len(ae_run["epoch_times_s"]) == 2
    # the threshold: a conformal quantile of out-of-fold scores of every train + val brain image
    ae_config = json.loads((toy_repo / "data/models/us/autoencoder/config.json").read_text())
    assert ae_config["threshold_method"] == "oof_conformal"
    assert ae_report["threshold_n"] == ae_report["n_train"] + ae_report["n_val"]
    assert ae_config["threshold"] == pytest.approx(ae_report["threshold"])
    # the plane classifier's temperature, fitted on val, with its reliability diagram
    pc_report = json.loads((toy_repo / "data/reports/train_plane_classifier_us.json").read_text())
    pc_config = json.loads((toy_repo / "data/models/us/plane_classifier/config.json").read_text())
    assert pc_config["temperature"] > 0
    assert pc_config["temperature"] == pytest.approx(pc_report["temperature"])
    assert 0 <= pc_report["val_ece"] <= 1 and 0 <= pc_report["val_ece_uncalibrated"] <= 1
    # the scaling minimises the val log-loss, so it never raises it
    assert pc_report["val_log_loss_neg"] >= pc_report["val_log_loss_neg_uncalibrated"] - 1e-6
    for name in ("reliability.csv", "reliability.png"):
        assert (toy_repo / "data/reports/train_plane_classifier_us" / name).is_file()
    report = json.loads((toy_repo / "data/reports/evaluate_us.json").read_text())
    assert 0 <= report["plane_accuracy"] <= 1
    assert 0 <= report["anomaly_nonbrain_auroc"] <= 1
    for kind in ("occlusion", "noise", "blank", "inverted"):
        assert f"anomaly_{kind}_auroc" in report
    assert all(isinstance(v, (int, float)) for v in report.values())
    target = yaml.safe_load((toy_repo / "params.yaml").read_text())["train_autoencoder_us"]
    assert 0 <= report["plane_ece"] <= 1
    assert report["ae_target_false_alarm"] == target["target_false_alarm"]
    lo, hi = (
        report["ae_test_brain_flagged_rate_ci_low"],
        report["ae_test_brain_flagged_rate_ci_high"],
    )
    assert lo <= report["ae_test_brain_flagged_rate"] <= hi
    figures = toy_repo / "data/reports/evaluate_us/figures"
    for name in (
        "confusion.png",
        "confusion.csv",
        "anomaly_hist.png",
        "anomaly_roc.png",
        "reliability.csv",
        "reliability.png",
    ):
        assert (figures / name).is_file(), name

    # the per-item evaluations register_us pairs a champion against (promotion's items format)
    pc_items = pd.read_csv(toy_repo / "data/reports/train_plane_classifier_us/val_items.csv")
    assert list(pc_items.columns) == ["item", "cluster", "y", "pred.0", "pred.1", "pred.2"]
    assert len(pc_items) == pc_report["n_val"] > 0
    assert np.allclose(pc_items[["pred.0", "pred.1", "pred.2"]].sum(axis=1), 1.0, atol=1e-5)
    ae_items = pd.read_csv(toy_repo / "data/reports/train_autoencoder_us/val_items.csv")
    assert list(ae_items.columns) == ["item", "cluster", "y", "pred"]
    assert len(ae_items) == 5 * ae_report["n_val"] and ae_items["y"].sum() == 4 * ae_report["n_val"]
    assert set(ae_items["cluster"].astype(str)) <= set(manifest["patient"].astype(str))

    from stages.cli import main as fetal
    from stages.common.registry import tracking

    # registered by register_us (challenger only), champions moved by fetal promote after a push
    names = ["us-head-segmenter", "us-plane-classifier", "us-brain-autoencoder"]
    rows = json.loads((toy_repo / "data/reports/register_us.json").read_text())["models"]
    assert [r["name"] for r in rows] == names and [r["version"] for r in rows] == ["1"] * 3
    assert all(tracking.alias_version(n, "champion") is None for n in names)
    run_dvc(toy_repo, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    assert fetal(["promote", "--repo", str(toy_repo)]) == 0
    for name in names:
        c = tracking.client()
        champion = c.get_model_version_by_alias(name, "champion")
        challenger = c.get_model_version_by_alias(name, "challenger")
        assert str(champion.version) == str(challenger.version) == "1"
        assert "eval_data_hash" in champion.tags and tracking.DIGESTS_TAG in champion.tags
    # the registered champion scores raw images (pyfunc with the stage code)
    from PIL import Image

    from stages.ultrasound.serving.score import main

    images = mirror / "fetal_planes" / "images"
    some = tmp_path / "some"
    some.mkdir()
    for path in sorted(images.glob("*.png"))[:2]:
        Image.open(path).save(some / path.name)
    out = tmp_path / "preds.csv"
    models = toy_repo / "data/models/us"
    folders = ["--plane-model", str(models / "plane_classifier")]
    folders += ["--ae-model", str(models / "autoencoder")]
    rc = main([str(some), "--out", str(out), "--no-abstain", *folders])
    preds = pd.read_csv(out)
    assert len(preds) == 2 and preds["error"].isna().all()
    assert rc == (0 if preds["plane"].notna().any() else 4)  # 4: no skull in either image
    # the registered head segmenter takes raw images too
    from stages.ultrasound.imaging import read_image

    segmenter = tracking.load_model("models:/us-head-segmenter@champion")
    raw = [read_image(p) for p in sorted((mirror / "hc18" / "images").glob("*_HC.png"))[:2]]
    ellipses = segmenter.predict(pd.DataFrame({"image": raw}))
    assert len(ellipses) == 2 and {"ok", "hc_px", "semi_major_px"} <= set(ellipses.columns)
