"""Anomaly false alarms on raw images as ``fetal score-us`` sees them (after ``make pipeline``).

``python -m experiments.ultrasound.false_alarm`` scores the raw images of the mirror
(``$FETAL_MIRROR`` or ``--mirror``) with the pipeline's local model folders
(``data/models/us/plane_classifier`` and ``autoencoder``) through
``stages.ultrasound.serving.score.Scorer``, as ``fetal score-us`` does, and prints per group the
share flagged by the autoencoder's threshold, with a 95 % patient-cluster bootstrap interval:

- test-split brain planes (FETAL_PLANES_DB ``Train == 0``: patients the models never saw): the
  false-alarm rate, to hold at most 10 % (the model's ``target_false_alarm``);
- non-brain planes of both splits, as ``evaluate_us`` counts them (no model trains on a
  non-brain image, so the train split's are as unseen as the test split's): the detection
  rate, to stay near 100 %;
- HC18 heads (another hospital's normal trans-thalamic planes): how far "new site" is "new".

Images refused by ``validate_us``'s checks or without a skull are counted apart (no score).
Without a trained model it says so and exits 1: the figure needs a full pipeline run.

Kept, though its table is in ``docs/results.md``: ``evaluate_us`` reports the held-out brain
images' flagged rate on crops, this one on raw images through the scoring CLI, and the HC18
("new site") rate nowhere else; both move with every retraining of the segmenter.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.ml.metrics import cluster_bootstrap_accuracy_ci
from stages.common.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
BRAIN_PLANES = ("Trans-thalamic", "Trans-cerebellum", "Trans-ventricular")


def groups(mirror: Path) -> dict[str, tuple[list[Path], list[str]]]:
    """{group: (image paths, patient per image)} of the images present in the mirror."""
    fp = mirror / "fetal_planes"
    table = pd.read_csv(fp / "FETAL_PLANES_DB_data.csv", dtype=str)
    table = table.assign(path=[fp / "images" / f"{n}.png" for n in table["Image_name"]])
    table = table[[p.is_file() for p in table["path"]]]
    test = table["Train"].str.strip().eq("0")
    brain = test & table["Plane"].eq("Fetal brain") & table["Brain_plane"].isin(BRAIN_PLANES)
    nonbrain = ~table["Plane"].eq("Fetal brain")
    out = {
        name: (list(t["path"]), list(t["Patient_num"]))
        for name, t in (("test brain", table[brain]), ("non-brain", table[nonbrain]))
    }
    hc = sorted((mirror / "hc18" / "images").glob("*_HC.png"))
    out["HC18 heads"] = (hc, [p.stem.split("_")[0] for p in hc])  # NNN_HC / NNN_2HC: one fetus
    return out


def flagged(scorer: Any, paths: list[Path], rules: Any) -> tuple[np.ndarray, int]:
    """Anomaly flag per scored image (NaN when refused or without a skull), and that count."""
    from stages.ultrasound.intake.image_checks import read_checked

    flags = np.full(len(paths), np.nan)
    for i, path in enumerate(paths):
        try:
            res = scorer.score_image(read_checked(path, rules))
        except ValueError:  # refused by validate_us's checks
            continue
        if "anomalous" in res:
            flags[i] = float(res["anomalous"])
    return flags, int(np.isnan(flags).sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="project root with data/models")
    ap.add_argument(
        "--mirror",
        type=Path,
        default=Path(os.environ.get("FETAL_MIRROR", "/work/shared/data")),
        help="folder with fetal_planes/ and hc18/ (default $FETAL_MIRROR)",
    )
    ap.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples")
    args = ap.parse_args(argv)
    models = args.project / "data" / "models" / "us"
    if not (models / "autoencoder" / "model.keras").is_file():
        print(f"no trained autoencoder at {models / 'autoencoder'}: run `make pipeline` first")
        return 1
    from stages.ultrasound.intake.image_checks import ImageRules, ValidateSettings
    from stages.ultrasound.serving.score import load_scorer

    scorer = load_scorer(
        str(models / "plane_classifier"), str(models / "autoencoder"), args.project
    )
    validate = load_settings(ValidateSettings, "validate_us", args.project / "params.yaml")
    rules = ImageRules.from_settings(validate)
    target = scorer.autoencoder.config["target_false_alarm"]
    print(f"threshold {scorer.autoencoder.threshold:.4g} (target false alarm {target})\n")
    print("| images | n scored | not scored | flagged | 95 % CI (patients) |")
    print("|---|---|---|---|---|")
    for name, (paths, patients) in groups(args.mirror).items():
        flags, n_out = flagged(scorer, paths, rules)
        ok = ~np.isnan(flags)
        lo, hi = cluster_bootstrap_accuracy_ci(
            flags[ok], np.asarray(patients)[ok], args.n_bootstrap, 0
        )
        rate = float(flags[ok].mean()) if ok.any() else float("nan")
        print(f"| {name} | {int(ok.sum())} | {n_out} | {rate:.3f} | {lo:.3f}-{hi:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
