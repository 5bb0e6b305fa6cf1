"""The ultrasound model stages on a subset of the real FETAL_PLANES_DB mirror (few epochs).

Crops come from the same functions the pipeline uses (enhance, segment, brain crop); the split,
the two trainings and the evaluation are the stages' own functions. Metrics are printed (run with
``-s``); the assertions check the wiring and the split, not the (few-epoch) quality.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.common.params import load_params
from stages.ultrasound.crops import PLANES, brain_rows, crops_for, plane_one_hot, to_unit_float
from stages.ultrasound.model_dir import save_model_dir
from tests.conftest import ROOT, ci_report, shared_mirror
from tests.synth_us import crop_settings, plane_settings, segment_settings, settings_from_params

PER_PLANE = {1: 10, 0: 8}  # images per brain plane from Train==1 / Train==0
N_NON_BRAIN = 8


def _subset(labels: pd.DataFrame, images: set[str]) -> pd.DataFrame:
    have = labels[labels["Image_name"].isin(images)]
    parts = []
    for train, n in PER_PLANE.items():
        for plane in PLANES:
            rows = have[(have["Train"] == train) & (have["Brain_plane"] == plane)]
            parts.append(rows.sort_values("Image_name").head(n))
    parts.append(have[have["Plane"] != "Fetal brain"].sort_values("Image_name").head(N_NON_BRAIN))
    return pd.concat(parts)


@pytest.mark.integration
@pytest.mark.mirror
@pytest.mark.slow
def test_us_models_on_real_mirror(tmp_path) -> None:
    from stages.ultrasound.anomaly.training import AutoencoderSettings, train_autoencoder
    from stages.ultrasound.enhance.methods import EnhanceStageSettings
    from stages.ultrasound.imaging import read_image
    from stages.ultrasound.pipeline import train_autoencoder as ae_stage
    from stages.ultrasound.pipeline import train_plane_classifier as pc_stage
    from stages.ultrasound.pipeline.evaluate import EvaluateSettings, evaluate
    from stages.ultrasound.pipeline.split_planes import assert_patient_disjoint, build_manifest
    from stages.ultrasound.planes.training import train_plane_classifier
    from stages.ultrasound.serving.score import AutoencoderPredictor, PlanePredictor, Preprocessor

    mirror = shared_mirror("fetal_planes")
    labels = pd.read_csv(mirror / "FETAL_PLANES_DB_data.csv")
    subset = _subset(labels, {p.stem for p in (mirror / "images").glob("*.png")})
    enhance = settings_from_params(EnhanceStageSettings, "enhance_us")
    # The classical segmenter: method unet needs train_segmenter_us's models, which this quick
    # run of the CNN stages does not train (the U-Net path runs end to end in
    # test_us_pipeline and on the real mirror in experiments.ultrasound.segmentation).
    segment = segment_settings(method="classical")
    crop_px = 64
    prep = Preprocessor(enhance, segment, crop_px)
    crops, ok = [], {}
    for name in subset["Image_name"]:
        crop, seg = prep(read_image(mirror / "images" / f"{name}.png"))
        crops.append(crop)
        ok[name] = seg.ok
    names, images = np.array(list(subset["Image_name"])), np.stack(crops)
    salt = load_params("split_planes_us", ROOT / "params.yaml")["salt"]
    manifest = build_manifest(subset, set(ok), ok, 0.25, salt)
    assert_patient_disjoint(manifest)
    assert (
        manifest.loc[manifest["split"] == "test", "image"].isin(
            labels.loc[labels["Train"] == 0, "Image_name"]
        )
    ).all()

    ae_s = settings_from_params(AutoencoderSettings, "train_autoencoder_us", epochs=3)
    pc_s = plane_settings(epochs=4)
    data = {}
    for split in ("train", "val"):
        rows = brain_rows(manifest, split)
        data[split] = (to_unit_float(crops_for(rows, names, images), crop_px), rows)
    onehot = {k: plane_one_hot(v[1]["brain_plane"]) for k, v in data.items()}
    ae, ae_res = train_autoencoder(
        data["train"][0], onehot["train"], data["val"][0], onehot["val"], ae_s
    )
    labels_idx = {k: v[1]["brain_plane"].map(PLANES.index).to_numpy() for k, v in data.items()}
    clf, clf_res = train_plane_classifier(
        data["train"][0], labels_idx["train"], data["val"][0], labels_idx["val"], pc_s
    )
    ae_config = ae_stage.model_config(ae_res, ae_s, enhance, segment, crop_px)
    save_model_dir(ae, tmp_path / "ae", ae_config, ae_res["latent"])
    save_model_dir(
        clf, tmp_path / "pc", pc_stage.model_config(1.0, pc_s, enhance, segment, crop_px)
    )
    evaluate_s = settings_from_params(EvaluateSettings, "evaluate_us", n_bootstrap=50)
    report, tables = evaluate(
        PlanePredictor(tmp_path / "pc"),
        AutoencoderPredictor(tmp_path / "ae"),
        manifest,
        names,
        images,
        evaluate_s,
        crop_settings(),
    )
    shown = ["plane_accuracy", "plane_macro_f1", "ae_val_mse", "anomaly_nonbrain_auroc"]
    ci_report(
        "us_mirror",
        "Ultrasound models on a subset of the real mirror, SMOKE RUN (3-4 epochs, "
        f"{len(names)} images): not the models' real performance\n"
        + "\n".join(f"- {k}: {report[k]:.4f}" for k in shown if k in report),
    )
    assert report["n_test"] == 3 * PER_PLANE[0]
    assert 0 <= report["plane_accuracy"] <= 1 and report["ae_val_mse"] > 0
    assert tables["cm"].sum() == report["n_test"]
