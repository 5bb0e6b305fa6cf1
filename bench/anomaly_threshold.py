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

    from stages.ultrasound.anomaly.autoencoder import fit_latent, latent_codes
    from stages.ultrasound.crops import brain_split_crops, plane_one_hot, to_unit_float
    from stages.ultrasound.paths import CROPS_NPZ, PLANES_MANIFEST_CSV
    from stages.ultrasound.pipeline.train_autoencoder import (
        anomaly_threshold,  # the stage's own rule
    )

    params = load_params("train_autoencoder_us", args.project / "params.yaml")
    splits = brain_split_crops(args.project / PLANES_MANIFEST_CSV, args.project / CROPS_NPZ)
    x, planes, patients = {}, {}, {}
    for s in ("train", "val"):
        rows, crops = splits[s]
        x[s] = to_unit_float(crops, params["input_size"])
        planes[s], patients[s] = (
            plane_one_hot(rows["brain_plane"]),
            list(rows["patient"].astype(str)),
        )
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    kind = params["anomaly_score"]
    # the final statistics, fitted on the train codes as the stage fits them
    latent = fit_latent(
        kind, latent_codes(model, x["train"]), x["train"], params["latent_shrinkage"]
    )
    print(f"{len(x['train'])} train + {len(x['val'])} val brain crops, score {kind}\n")
    print("| folds | target | threshold | val flagged |")
    print("|---|---:|---:|---:|")
    n_patients = len(set(patients["train"] + patients["val"]))
    for k in args.folds:
        for a in args.targets:
            rule = {**params, "threshold_folds": k, "target_false_alarm": a}
            r = anomaly_threshold(
                model, (x["train"], x["val"]), (planes["train"], planes["val"]), latent, rule,
                (patients["train"], patients["val"]),
            )  # fmt: skip
            label = f"{n_patients} (one per patient)" if k <= 0 else str(min(k, n_patients))
            print(f"| {label} | {a:.2f} | {r['threshold']:.2f} | {r['val_flagged_rate']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
