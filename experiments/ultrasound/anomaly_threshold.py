"""Anomaly threshold rules on train + val only: which fold rule and target.

After ``make pipeline`` (it reads ``data/models/us/autoencoder`` and the brain crops). For each
fold rule (``threshold_folds``: 5, and 0 = leave one patient out) and each target false-alarm
rate, prints the conformal threshold of the out-of-fold scores of every train + val brain image
and the share of the val images the final model flags at it. No test image is read: this is
how a threshold rule can be compared without the held-out patients
(``python -m experiments.ultrasound.false_alarm`` gives the held-out rates of the rule in
``params.yaml``).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


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

    from stages.common.settings import load_settings
    from stages.ultrasound.anomaly.autoencoder import fit_latent_ring, latent_codes
    from stages.ultrasound.anomaly.training import AutoencoderSettings, anomaly_threshold
    from stages.ultrasound.crops import brain_split_crops, to_unit_float
    from stages.ultrasound.paths import CROPS_NPZ, PLANES_MANIFEST_CSV

    params = args.project / "params.yaml"
    s = load_settings(AutoencoderSettings, "train_autoencoder_us", params)
    splits = brain_split_crops(args.project / PLANES_MANIFEST_CSV, args.project / CROPS_NPZ)
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    size = int(model.input["image"].shape[1])
    x = {k: to_unit_float(crops, size) for k, (_, crops) in splits.items()}
    patients = {k: list(rows["patient"].astype(str)) for k, (rows, _) in splits.items()}
    # the final statistics, fitted on the train codes as the stage fits them
    latent = fit_latent_ring(latent_codes(model, x["train"]), x["train"], s.latent_shrinkage)
    kind = "latent_ring"
    print(f"{len(x['train'])} train + {len(x['val'])} val brain crops, score {kind}\n")
    print("| folds | target | threshold | val flagged |")
    print("|---|---:|---:|---:|")
    n_patients = len(set(patients["train"] + patients["val"]))
    for k in args.folds:
        for a in args.targets:
            rule = replace(s, threshold_folds=k, target_false_alarm=a)
            pair = (patients["train"], patients["val"])
            r = anomaly_threshold(model, (x["train"], x["val"]), latent, rule, pair)
            label = f"{n_patients} (one per patient)" if k <= 0 else str(min(k, n_patients))
            print(f"| {label} | {a:.2f} | {r['threshold']:.2f} | {r['val_flagged_rate']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
