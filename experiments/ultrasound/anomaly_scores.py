"""Anomaly scores other than the autoencoder's ``latent_ring``, on the same model and crops.

``python -m experiments.ultrasound.anomaly_scores`` (after ``make pipeline``) loads the trained
autoencoder (``data/models/us/autoencoder``) and the pipeline's crops, scores the test split's
brain crops, the non-brain crops and corrupted copies of the test crops (``us_crops``'s
strengths, ``evaluate_us``'s seed) with each score of :data:`SCORES`, and prints each proxy's
AUROC against the test brain crops:

- ``mse``: per-image reconstruction MSE (rewards dark, smooth frames: non-brain AUROC ~0.4,
  blank 0);
- ``normalised_mse``: MSE / (image variance + 1e-3): blank frames fixed, non-brain still ~0.4;
- ``latent_mahalanobis``: Mahalanobis distance of the bottleneck code to the training brain
  codes (Lee et al. 2018, NeurIPS, on the autoencoder's encoder; non-brain AUROC 0.91 on the
  same model when it was chosen);
- ``latent_ring``: that distance plus the shortfall of the crop's skull-ring contrast, in
  standard deviations of the training crops: the pipeline's score.

Until the layout change the first three were ``train_autoencoder_us.anomaly_score`` options;
their thresholds and registered models now exist only here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.ml import metrics
from stages.common.settings import load_settings
from stages.ultrasound.anomaly.autoencoder import (
    anomaly_scores,
    fit_gaussian,
    latent_codes,
    mahalanobis,
    reconstruct,
    reconstruction_mse,
)
from stages.ultrasound.anomaly.corruptions import CLEAN, corrupted_copies
from stages.ultrasound.crops import (
    PLANES,
    CropSettings,
    brain_rows,
    brain_split_crops,
    crops_for,
    plane_one_hot,
    to_unit_float,
)
from stages.ultrasound.model_dir import load_arrays, load_model_dir
from stages.ultrasound.paths import AUTOENCODER_DIR, CROPS_NPZ, PLANES_MANIFEST_CSV

ROOT = Path(__file__).resolve().parents[2]
Score = Callable[[Any, np.ndarray, np.ndarray, dict], np.ndarray]


def normalised_mse(x: np.ndarray, recon: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Per-image MSE / (variance of the image + ``eps``): scale-free, so a flat frame the
    autoencoder turns into a textured head scores high; ``eps`` ([0, 1]-intensity variance
    units) keeps exactly constant images finite."""
    mse = np.mean((recon - x) ** 2, axis=(1, 2, 3))
    return (mse / (np.var(x, axis=(1, 2, 3)) + eps)).astype(np.float32)


SCORES: dict[str, Score] = {
    "mse": lambda m, x, p, st: reconstruction_mse(m, x, p),
    "normalised_mse": lambda m, x, p, st: normalised_mse(x, reconstruct(m, x, p)),
    "latent_mahalanobis": lambda m, x, p, st: mahalanobis(
        latent_codes(m, x), st["gaussian"][0], st["gaussian"][1]
    ),
    "latent_ring": lambda m, x, p, st: anomaly_scores(m, x, st["latent"]),
}


def proxies(project: Path, crop: CropSettings, seed: int) -> dict[str, np.ndarray]:
    """The crops of each group: ``test brain``, ``non-brain`` and each corruption's copies."""
    manifest = pd.read_csv(project / PLANES_MANIFEST_CSV)
    with np.load(project / CROPS_NPZ) as z:
        names, images = z["names"], z["images"]
    test = crops_for(brain_rows(manifest, "test"), names, images)
    other = manifest[~manifest["is_brain"].astype(bool)].reset_index(drop=True)
    groups = {"test brain": test, "non-brain": crops_for(other, names, images)}
    copies = corrupted_copies(test, seed, crop)
    return groups | {k: v for k, v in copies.items() if k != CLEAN}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="project root with data/")
    ap.add_argument("--seed", type=int, default=42, help="seed of the corrupted copies")
    ap.add_argument("--shrinkage", type=float, default=0.1, help="of the codes' covariance")
    args = ap.parse_args(argv)
    folder = args.project / AUTOENCODER_DIR
    if not (folder / "model.keras").is_file():
        print(f"no trained autoencoder at {folder}: run `make pipeline` first")
        return 1
    crop = load_settings(CropSettings, "us_crops", args.project / "params.yaml")
    model, config = load_model_dir(folder)
    size = int(config["input_size"])
    train = brain_split_crops_train(args.project, size)
    stats = {
        "latent": load_arrays(folder),
        "gaussian": fit_gaussian(latent_codes(model, train), args.shrinkage),
    }
    groups = {k: to_unit_float(v, size) for k, v in proxies(args.project, crop, args.seed).items()}
    plane = plane_one_hot([PLANES[0]])  # the reconstruction scores: conditioned on one plane
    scores = {
        name: {g: fn(model, x, np.repeat(plane, len(x), axis=0), stats) for g, x in groups.items()}
        for name, fn in SCORES.items()
    }
    kinds = [g for g in groups if g != "test brain"]
    print("| score | " + " | ".join(f"{k} AUROC" for k in kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for name, table in scores.items():
        normal = table["test brain"]
        cells = []
        for k in kinds:
            y = np.r_[np.zeros(len(normal)), np.ones(len(table[k]))].astype(int)
            cells.append(f"{metrics.auc(y, np.r_[normal, table[k]]):.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


def brain_split_crops_train(project: Path, size: int) -> np.ndarray:
    """The train split's brain crops in [0, 1]: the normal class the statistics are fitted on."""
    splits = brain_split_crops(project / PLANES_MANIFEST_CSV, project / CROPS_NPZ, ("train",))
    return to_unit_float(splits["train"][1], size)


if __name__ == "__main__":
    raise SystemExit(main())
