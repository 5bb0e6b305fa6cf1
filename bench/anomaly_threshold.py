"""Anomaly threshold rules on train + val only: ``python -m bench.anomaly_threshold``.

After ``make pipeline`` (it reads ``data/models/us/autoencoder`` and the brain crops). For each
fold rule (``threshold_folds``: 5, and 0 = leave one patient out) and each target false-alarm
rate, prints the conformal threshold of the out-of-fold scores of every train + val brain image
and the share of the val images the final model flags at it. No test image is read: this is
how a threshold rule can be compared without the held-out patients
(``python -m bench.us_false_alarm`` gives the held-out rates of the rule in ``params.yaml``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stages.common.params import load_params

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="project root with data/models")
    ap.add_argument("--folds", type=int, nargs="+", default=[5, 0], help="0 = one per patient")
    ap.add_argument("--targets", type=float, nargs="+", default=[0.05, 0.10])
    args = ap.parse_args(argv)
    model_dir = args.project / "data" / "models" / "us" / "autoencoder"
    if not (model_dir / "model.keras").is_file():
        print(f"no trained autoencoder at {model_dir}: run `make pipeline` first")
        return 1
    import keras

    from stages.ultrasound.anomaly_threshold import (
        conformal_quantile,
        out_of_fold_scores,
        patient_folds,
    )
    from stages.ultrasound.autoencoder import fit_latent, latent_codes, latent_score_from_codes
    from stages.ultrasound.crops import brain_split_crops, to_unit_float
    from stages.ultrasound.paths import CROPS_NPZ, PLANES_MANIFEST_CSV

    params = load_params("train_autoencoder_us", args.project / "params.yaml")
    kind, shrink, size = params["anomaly_score"], params["latent_shrinkage"], params["input_size"]
    splits = brain_split_crops(args.project / PLANES_MANIFEST_CSV, args.project / CROPS_NPZ)
    x = {s: to_unit_float(crops, size) for s, (_, crops) in splits.items() if s != "test"}
    groups = [str(p) for s in ("train", "val") for p in splits[s][0]["patient"]]
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    codes = {s: latent_codes(model, x[s]) for s in ("train", "val")}
    final = fit_latent(kind, codes["train"], x["train"], shrink)  # as the stage fits it
    val_scores = latent_score_from_codes(kind, codes["val"], x["val"], final)
    x_all = np.concatenate([x["train"], x["val"]])
    codes_all = np.concatenate([codes["train"], codes["val"]])
    print(f"{len(x['train'])} train + {len(x['val'])} val brain crops, score {kind}\n")
    print("| folds | target | threshold | val flagged |")
    print("|---|---:|---:|---:|")
    for k in args.folds:
        folds = patient_folds(groups, k, params["seed"])
        if folds is None:
            continue
        oof = out_of_fold_scores(kind, codes_all, x_all, folds, shrink)
        label = f"{len(set(folds))}" + (" (one per patient)" if k <= 0 else "")
        for a in args.targets:
            t = conformal_quantile(oof, a)
            print(f"| {label} | {a:.2f} | {t:.2f} | {np.mean(val_scores > t):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
