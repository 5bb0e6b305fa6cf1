"""Stage ``train_autoencoder_us``: a plane-conditioned convolutional autoencoder of brain crops.

Trains on the train split's brain crops (:mod:`stages.ultrasound.anomaly.training`: the network
and its anomaly threshold), saves the model folder with the head segmenter that made its crops,
and scores the val brain crops and their seeded corrupted copies
(:func:`~stages.ultrasound.anomaly.corruptions.corruption_items`): their AUROC in the report and
every item in ``data/reports/train_autoencoder_us/val_items.csv``, the per-item evaluation the
registry's ``register_us`` pairs a champion against. Validation MSE would reward an autoencoder
that reconstructs anything well, non-brain images included, the opposite of what a detector
should do. Registration is not this stage's job.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_csv, write_json, write_run_report
from stages.common.ml import metrics
from stages.common.params import project_root
from stages.common.registry import tracking
from stages.common.settings import load_settings
from stages.ultrasound.anomaly.autoencoder import ANOMALY_SCORE, anomaly_scores
from stages.ultrasound.anomaly.corruptions import corruption_items
from stages.ultrasound.anomaly.training import AutoencoderSettings, train_autoencoder
from stages.ultrasound.crops import (
    PLANES,
    CropSettings,
    brain_split_crops,
    plane_one_hot,
    to_unit_float,
)
from stages.ultrasound.enhance.methods import EnhanceStageSettings, recipe_dict
from stages.ultrasound.head.settings import SegmentSettings
from stages.ultrasound.model_dir import bundle_segmenter, save_model_dir
from stages.ultrasound.paths import (
    AUTOENCODER_DIR,
    CROPS_NPZ,
    FINAL_SEGMENTER,
    PLANES_MANIFEST_CSV,
    TRAIN_AUTOENCODER_REPORT,
    TRAIN_AUTOENCODER_VAL_ITEMS,
)

log = logging.getLogger(__name__)


def model_config(
    result: dict[str, Any],
    s: AutoencoderSettings,
    enhance: EnhanceStageSettings,
    segment: SegmentSettings,
    crop_px: int,
) -> dict[str, Any]:
    """The folder's ``config.json``: everything its predictor reads, nothing it must guess
    (the crops' recipe, so new images are cropped as the training crops were)."""
    return {
        "kind": "autoencoder",
        "anomaly_score": ANOMALY_SCORE,
        "input_size": crop_px,
        "planes": list(PLANES),
        "threshold": result["threshold"],
        "threshold_method": result["threshold_method"],
        "target_false_alarm": s.target_false_alarm,
        "val_mse": result["val_mse"],
        "enhance_us": recipe_dict(enhance),
        "segment_us": asdict(segment),
    }


def report_of(result: dict[str, Any], items: pd.DataFrame) -> dict[str, Any]:
    """The stage's metrics: the training result's figures and the val corruption AUROC."""
    skip = ("epoch_times_s", "latent", "threshold_method")  # lists, arrays and a word
    report = {k: v for k, v in result.items() if k not in skip}
    report["val_mse_neg"] = -result["val_mse"]
    auroc = (
        metrics.auc(items["y"].to_numpy(), items["pred"].to_numpy()) if result["n_val"] else np.nan
    )
    return report | {"val_corruption_auroc": auroc}


def train(
    root: Path, s: AutoencoderSettings, crops: CropSettings
) -> tuple[Any, dict[str, Any], pd.DataFrame]:
    """Train on the train split's brain crops; score the val crops and their corruptions."""
    data = brain_split_crops(root / PLANES_MANIFEST_CSV, root / CROPS_NPZ)
    x = {k: to_unit_float(c, crops.crop_px) for k, (_, c) in data.items()}
    planes = {k: plane_one_hot(rows["brain_plane"]) for k, (rows, _) in data.items()}
    patients = tuple(list(data[k][0]["patient"].astype(str)) for k in ("train", "val"))
    model, result = train_autoencoder(
        x["train"], planes["train"], x["val"], planes["val"], s, patients
    )

    def score(crops_u8: np.ndarray) -> np.ndarray:
        return anomaly_scores(model, to_unit_float(crops_u8, crops.crop_px), result["latent"])

    return model, result, corruption_items(score, *data["val"], s.seed, crops)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    s = load_settings(AutoencoderSettings, "train_autoencoder_us")
    crops = load_settings(CropSettings, "us_crops")
    enhance = load_settings(EnhanceStageSettings, "enhance_us")
    segment = load_settings(SegmentSettings, "segment_us")
    root = project_root()
    logged = asdict(s) | {"us_crops": asdict(crops)}
    with tracking.run(
        "us-brain-autoencoder", "train_autoencoder_us", logged, stage="train_autoencoder_us"
    ):
        model, result, items = train(root, s, crops)
        report = report_of(result, items)
        with atomic_dir(root / AUTOENCODER_DIR) as tmp:
            config = model_config(result, s, enhance, segment, crops.crop_px)
            save_model_dir(model, tmp, config, result["latent"])
            # new images must be cropped by the segmenter that cropped the training images
            bundle_segmenter(tmp, segment.method, root / FINAL_SEGMENTER)
        times = result["epoch_times_s"]
        # times are run facts (untracked data/runs/ and MLflow), not model facts
        timings = {"epoch_time_s_mean": float(np.mean(times)), "train_time_s": float(np.sum(times))}
        tracking.log_metrics(report | timings)
    write_csv(root / TRAIN_AUTOENCODER_VAL_ITEMS, items)
    write_json(root / TRAIN_AUTOENCODER_REPORT, report)
    write_run_report(root, "train_autoencoder_us", timings | {"epoch_times_s": times})
    log.info(
        "val MSE %.5f, val corruption AUROC %.3f, threshold %.5f",
        report["val_mse"],
        report["val_corruption_auroc"],
        report["threshold"],
    )


if __name__ == "__main__":
    main()
