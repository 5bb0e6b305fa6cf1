"""Plane read-out variants by patient-grouped CV: ``python -m bench.plane_features``.

Which plane-classifier features to try next, chosen **without the test split**: the train and
val brain crops of the current pipeline (``data/processed/us/crops.npz``, the manifest's
``train`` and ``val`` rows; run ``dvc repro segment_us split_planes_us`` first) are split into
``--folds`` patient-grouped, plane-stratified folds, ``--repeats`` times with different shuffles;
each variant's features go through a standardised, class-balanced logistic regression
(scikit-learn, one column per inverse L2 strength ``C``) and the table prints the pooled
accuracy over all held-out folds and repeats. ``aug`` = augmented copies of each training crop
(the ``train_plane_classifier_us.augment`` transforms, random) or ``mirror`` (one left-right
mirror of each training crop, nothing random); features of the held-out crops are never
augmented.

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

from stages.common.params import load_params
from stages.ultrasound import models as M

ROOT = Path(__file__).resolve().parents[1]
Features = Callable[[np.ndarray], np.ndarray]


def gabor_features(
    frequencies: list[float], orientations: int, grids: list[int], pyramid: bool = True
) -> Features:
    """The stage's fixed Gabor front-end with other settings, as a batch feature function."""
    from stages.ultrasound.gabor import GaborGrid

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


def grouped_cv_accuracy(
    fn: Features,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    cs: list[float],
    n_augment: int | str,
    augment: dict,
    folds: int,
    repeats: int,
) -> dict[float, float]:
    """Pooled held-out accuracy per ``C`` over ``repeats`` x ``folds`` patient-grouped folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from stages.common.splits import stratified_folds

    feats = fn(x)
    hits = dict.fromkeys(cs, 0)
    for seed in range(repeats):
        fold_of = stratified_folds(list(range(len(y))), y, folds, seed, groups=groups)
        for k in range(folds):
            tr, te = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
            f_tr, y_tr = feats[tr], y[tr]
            if n_augment == MIRROR:
                f_tr = np.concatenate([f_tr, fn(np.ascontiguousarray(x[tr][:, :, ::-1]))])
                y_tr = np.tile(y[tr], 2)
            elif n_augment:
                # augmented_copies returns the originals first: only the copies are new features
                xa = M.augmented_copies(x[tr], n_augment, augment, seed)
                f_tr = np.concatenate([f_tr, fn(xa[len(tr) :])])
                y_tr = np.tile(y[tr], len(xa) // len(tr))
            for c in cs:
                clf = make_pipeline(
                    StandardScaler(),
                    LogisticRegression(C=c, max_iter=3000, class_weight="balanced"),
                )
                clf.fit(f_tr, y_tr)
                hits[c] += int((clf.predict(feats[te]) == y[te]).sum())
    return {c: h / (repeats * len(y)) for c, h in hits.items()}


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
    args = ap.parse_args()

    params = load_params("train_plane_classifier_us")
    manifest = pd.read_csv(ROOT / "data/processed/us/planes_manifest.csv")
    with np.load(ROOT / "data/processed/us/crops.npz") as z:
        names, images = z["names"], z["images"]
    rows = pd.concat([M.brain_rows(manifest, "train"), M.brain_rows(manifest, "val")])
    x = M.to_unit_float(M.crops_for(rows, names, images), params["input_size"])
    y = rows["brain_plane"].map(M.PLANES.index).to_numpy(dtype=int)
    groups = rows["patient"].to_numpy()
    per_plane = np.bincount(y, minlength=len(M.PLANES))
    counts = " / ".join(f"{n} {p}" for p, n in zip(M.PLANES, per_plane, strict=True))
    print(
        f"{len(y)} train+val brain crops of {len(set(groups))} patients ({counts}); "
        f"{args.folds} patient-grouped folds x {args.repeats} repeats; test split not read\n"
    )
    print("| features | aug | dim | " + " | ".join(f"C {c:g}" for c in args.c) + " |")
    print("|---|---:|---:|" + "---:|" * len(args.c))
    for name in args.variants:
        fn = VARIANTS[name]()
        dim = fn(x[:1]).shape[1]
        for n_aug in args.augment:
            acc = grouped_cv_accuracy(
                fn, x, y, groups, args.c, n_aug, params["augment"], args.folds, args.repeats
            )
            cells = " | ".join(f"{acc[c]:.3f}" for c in args.c)
            print(f"| {name} | {n_aug} | {dim} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
