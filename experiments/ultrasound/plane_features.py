"""Plane read-out variants by patient-grouped CV, without the test split.

``python -m experiments.ultrasound.plane_features``: which plane-classifier features to try next,
chosen **without the test split**: the train and
val brain crops of the current pipeline (``data/processed/us/crops.npz``, the manifest's
``train`` and ``val`` rows; run ``dvc repro segment_us split_planes_us`` first) are split into
``--folds`` patient-grouped, plane-stratified folds, ``--repeats`` times with different shuffles;
each variant's features go through a standardised, class-balanced logistic regression
(scikit-learn, one column per inverse L2 strength ``C``) and the table prints the pooled
accuracy over all held-out folds and repeats. ``aug`` = augmented copies of each training crop
(the ``train_plane_classifier_us.augment`` transforms, random) or ``mirror`` (one left-right
mirror of each training crop, nothing random); features of the held-out crops are never
augmented.

``--train-fractions`` draws a learning curve instead: each training fold keeps only that
fraction of its patients (whole patients, drawn at random per fold and repeat; the held-out fold
is untouched), so the table shows how held-out accuracy moves with the number of training crops.

This is a screening tool, not the stage: the stage's own read-out is a Keras softmax layer
(``train_plane_classifier_us``), and its figure is the one in ``evaluate_us.json``. With ~134
images, a difference below ~0.04 between two rows is within the spread of the folds.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.settings import load_settings
from stages.ultrasound.crops import PLANES, CropSettings, brain_rows, crops_for, to_unit_float
from stages.ultrasound.planes.classifier import AugmentSettings, PlaneClassifierSettings
from stages.ultrasound.planes.training import augmented_copies

ROOT = Path(__file__).resolve().parents[2]
Features = Callable[[np.ndarray], np.ndarray]


def gabor_features(
    frequencies: list[float], orientations: int, grids: list[int], pyramid: bool = True
) -> Features:
    """The stage's fixed Gabor front-end with other settings, as a batch feature function."""
    from stages.ultrasound.planes.gabor import GaborGrid

    layer = GaborGrid(frequencies, orientations, grids, pyramid)
    return lambda x: np.concatenate(
        [np.asarray(layer(x[i : i + 64])) for i in range(0, len(x), 64)]
    )


def hog_features(cell_px: int) -> Features:
    """Histogram of oriented gradients of each crop (9 bins, 3 x 3 cell blocks)."""
    from skimage.feature import hog

    return lambda x: np.stack(
        [hog(a[..., 0], orientations=9, pixels_per_cell=(cell_px, cell_px)) for a in x]
    )


def concat(*fns: Features) -> Features:
    return lambda x: np.concatenate([f(x) for f in fns], axis=1)


VARIANTS: dict[str, Callable[[], Features]] = {
    "gabor f 0.1-0.3, 6 orient., grids 4,8 (default)": lambda: gabor_features(
        [0.1, 0.2, 0.3], 6, [4, 8]
    ),
    "gabor f 0.05-0.4, 8 orient., grids 4,8": lambda: gabor_features(
        [0.05, 0.1, 0.2, 0.3, 0.4], 8, [4, 8]
    ),
    "gabor default + grid 16": lambda: gabor_features([0.1, 0.2, 0.3], 6, [4, 8, 16]),
    "gabor f 0.05-0.4, 8 orient., grids 4,8,16": lambda: gabor_features(
        [0.05, 0.1, 0.2, 0.3, 0.4], 8, [4, 8, 16]
    ),
    "hog 16 px cells": lambda: hog_features(16),
    "gabor default + hog 16 px": lambda: concat(
        gabor_features([0.1, 0.2, 0.3], 6, [4, 8]), hog_features(16)
    ),
}


MIRROR = "mirror"


def augment_arg(value: str) -> int | str:
    """``--augment`` values: a number of random copies, or ``mirror``."""
    return MIRROR if value == MIRROR else int(value)


def subsample_groups(
    index: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """The items of ``index`` whose group is among a random ``fraction`` of its groups.

    Whole groups (patients) are kept or dropped, never part of one; at least one group is kept.
    ``fraction`` 1 returns ``index`` unchanged.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return index
    ids = np.unique(groups[index])
    keep = rng.choice(ids, size=max(1, round(fraction * len(ids))), replace=False)
    return index[np.isin(groups[index], keep)]


def grouped_cv_accuracy(
    fn: Features,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    cs: list[float],
    n_augment: int | str,
    augment: AugmentSettings,
    folds: int,
    repeats: int,
    train_fraction: float = 1.0,
) -> tuple[dict[float, float], float]:
    """Pooled held-out accuracy per ``C`` over ``repeats`` x ``folds`` patient-grouped folds.

    Also returns the mean number of training crops per fold (before augmentation), which
    ``train_fraction`` < 1 lowers by keeping that fraction of each training fold's patients.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from stages.common.ml.splits import stratified_folds

    feats = fn(x)
    # The mirror is deterministic: its features are computed once, not once per fold.
    mirrored = fn(np.ascontiguousarray(x[:, :, ::-1])) if n_augment == MIRROR else None
    hits = dict.fromkeys(cs, 0)
    n_train: list[int] = []
    for seed in range(repeats):
        fold_of = stratified_folds(list(range(len(y))), y, folds, seed, groups=groups)
        for k in range(folds):
            tr, te = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
            rng = np.random.default_rng([seed, k])
            tr = subsample_groups(tr, groups, train_fraction, rng)
            n_train.append(len(tr))
            f_tr, y_tr = feats[tr], y[tr]
            if mirrored is not None:
                f_tr = np.concatenate([f_tr, mirrored[tr]])
                y_tr = np.tile(y[tr], 2)
            elif n_augment:
                # augmented_copies returns the originals first: only the copies are new features
                xa = augmented_copies(x[tr], n_augment, augment, seed)
                f_tr = np.concatenate([f_tr, fn(xa[len(tr) :])])
                y_tr = np.tile(y[tr], len(xa) // len(tr))
            for c in cs:
                clf = make_pipeline(
                    StandardScaler(),
                    LogisticRegression(C=c, max_iter=3000, class_weight="balanced"),
                )
                clf.fit(f_tr, y_tr)
                hits[c] += int((clf.predict(feats[te]) == y[te]).sum())
    return {c: h / (repeats * len(y)) for c, h in hits.items()}, float(np.mean(n_train))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--augment",
        type=augment_arg,
        nargs="+",
        default=[0, 3],
        help="random augmented copies per training crop, or 'mirror' (one left-right mirror)",
    )
    ap.add_argument("--c", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument(
        "--train-fractions",
        type=float,
        nargs="+",
        default=[1.0],
        help="learning curve: fractions of each training fold's patients to keep",
    )
    args = ap.parse_args()

    augment = load_settings(PlaneClassifierSettings, "train_plane_classifier_us").augment
    crop_px = load_settings(CropSettings, "us_crops").crop_px
    manifest = pd.read_csv(ROOT / "data/processed/us/planes_manifest.csv")
    with np.load(ROOT / "data/processed/us/crops.npz") as z:
        names, images = z["names"], z["images"]
    rows = pd.concat([brain_rows(manifest, "train"), brain_rows(manifest, "val")])
    x = to_unit_float(crops_for(rows, names, images), crop_px)
    y = rows["brain_plane"].map(PLANES.index).to_numpy(dtype=int)
    groups = rows["patient"].to_numpy()
    per_plane = np.bincount(y, minlength=len(PLANES))
    counts = " / ".join(f"{n} {p}" for p, n in zip(PLANES, per_plane, strict=True))
    print(
        f"{len(y)} train+val brain crops of {len(set(groups))} patients ({counts}); "
        f"{args.folds} patient-grouped folds x {args.repeats} repeats; test split not read\n"
    )
    curve = args.train_fractions != [1.0]
    extra = "train patients | train crops | " if curve else ""
    print("| features | aug | dim | " + extra + " | ".join(f"C {c:g}" for c in args.c) + " |")
    print("|---|---:|---:|" + ("---:|---:|" if curve else "") + "---:|" * len(args.c))
    for name in args.variants:
        fn = VARIANTS[name]()
        dim = fn(x[:1]).shape[1]
        for n_aug in args.augment:
            for fraction in args.train_fractions:
                acc, n_train = grouped_cv_accuracy(
                    fn,
                    x,
                    y,
                    groups,
                    args.c,
                    n_aug,
                    augment,
                    args.folds,
                    args.repeats,
                    fraction,
                )
                cells = " | ".join(f"{acc[c]:.3f}" for c in args.c)
                lead = f"{fraction:.0%} | {n_train:.0f} | " if curve else ""
                print(f"| {name} | {n_aug} | {dim} | {lead}{cells} |", flush=True)


if __name__ == "__main__":
    main()
