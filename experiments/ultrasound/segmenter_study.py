"""How much the head segmenter's out-of-fold figures move with the seed, and what the data buys.

``python -m experiments.ultrasound.segmenter_study --seeds 7 99`` trains the stage's networks
(``train_segmenter_us``'s own code: :func:`~stages.ultrasound.head.hc18_training.train_all`)
with each seed, as a rerun of the stage with ``train_segmenter_us.seed`` changed would (the seed
moves the weights, the augmentation and the batch order; the folds stay those of ``fold_seed``;
``--move-folds`` re-draws them with each seed too), on the enhanced HC18 store
of this workspace (``dvc repro enhance_us`` first), and prints the out-of-fold figures per seed.
The committed run's figures (seed 42) are read from ``data/reports/train_segmenter_us.json``
and printed beside them, with the spread (max - min) of the mean |HC error|.

``--n-train 200 400 --folds 0 1`` is the learning curve: each fold's networks train on a nested
subset of its training EXAMINATIONS (the first n images of a seeded order of them) with the
committed step budget (epochs scaled by the full training set's size over n, so every point
takes as many optimiser steps as the full run), scored on the same held-out images of the given
folds; the full training sets' figures on those folds come from the committed ``oof.csv``.
``--n-train 913 --steps-x 2`` trains on each fold's whole training set (n caps at its size) with
twice the committed step budget: what more optimiser steps, not more images, would buy.

Writes nothing in the workspace (models go to a temporary folder); prints Markdown tables;
``--out DIR`` also keeps each seed's per-image out-of-fold rows (``oof_seedN.csv``); ``--rows DIR
--folds 0 1`` reads them back beside the committed ``oof.csv`` and prints where the error sits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.parallel import DaskSettings
from stages.common.params import load_params, project_root
from stages.common.settings import load_settings
from stages.ultrasound.head.hc18_training import (
    HC18Images,
    exam_id,
    pair_jobs,
    read_hc18,
    segmenter_folds,
    summary,
    train_all,
)
from stages.ultrasound.head.settings import SegmenterSettings
from stages.ultrasound.paths import SEGMENTER_OOF_CSV, TRAIN_SEGMENTER_REPORT

COLUMNS = (
    "oof_hc_error_mm_mean",
    "oof_hc_error_mm_median",
    "oof_dice_mean",
    "oof_n_no_ellipse",
    "oof_flag_rate",
    "oof_accepted_hc_error_mm_mean",
    "oof_accepted_hc_error_mm_max",
)


def row(label: str, n_train: str, figures: dict) -> str:
    cells = [f"{figures[c]:.3f}" if isinstance(figures[c], float) else str(figures[c])
             for c in COLUMNS]  # fmt: skip
    return f"| {label} | {n_train} | " + " | ".join(cells) + " |"


def header() -> str:
    names = ["mean mm", "median mm", "Dice", "no ellipse", "flag rate", "accepted mean mm",
             "max accepted mm"]  # fmt: skip
    return "| run | training images | " + " | ".join(names) + " |\n|---|---:|" + "---:|" * 7


def seed_study(
    d: HC18Images, s: SegmenterSettings, seeds: list[int], dask: DaskSettings, out: Path | None,
    move_folds: bool,
) -> None:  # fmt: skip
    root = project_root()
    committed = json.loads((root / TRAIN_SEGMENTER_REPORT).read_text())
    means = {s.seed: committed["oof_hc_error_mm_mean"]}
    print(header())
    print(row(f"seed {s.seed} (committed)", "4/5 of each", committed))
    for seed in seeds:
        si = dataclasses.replace(s, seed=seed, fold_seed=seed if move_folds else s.fold_seed)
        folds = segmenter_folds(d.names, d.hc_mm, si.n_folds, si.fold_seed)["fold"].to_numpy()
        with tempfile.TemporaryDirectory(prefix="segmenter_seed_") as tmp:
            oof, _ = train_all(Path(tmp), d, folds, si, dask, load_params("enhance_us"))
        figures = summary(oof)
        means[seed] = figures["oof_hc_error_mm_mean"]
        if out is not None:  # the per-image rows, to trace which images moved (outside the repo)
            out.mkdir(parents=True, exist_ok=True)
            oof.to_csv(out / f"oof_seed{seed}.csv", index=False)
        print(row(f"seed {seed}", "4/5 of each", figures), flush=True)
    spread = max(means.values()) - min(means.values())
    print(f"\nspread (max - min) of the OOF mean |HC error| over seeds {sorted(means)}: "
          f"{spread:.3f} mm")  # fmt: skip


def nested_subset(d: HC18Images, train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The first ``n`` images of ``train`` in a seeded order of their examinations (nested:
    the 200 are among the 400)."""
    exams = sorted({exam_id(d.names[i]) for i in train})
    order = {e: k for k, e in enumerate(np.random.default_rng(seed).permutation(exams))}
    return np.array(sorted(train, key=lambda i: (order[exam_id(d.names[i])], i)))[:n]


def curve_point(
    d: HC18Images, fold: np.ndarray, s: SegmenterSettings, n: int, folds_shown: list[int],
    dask: DaskSettings, steps_x: float,
) -> tuple[pd.DataFrame, float]:  # fmt: skip
    """Held-out rows of ``folds_shown`` scored by pairs trained on ``n`` images of the rest
    (all of them when ``n`` is larger) with ``steps_x`` times the committed step budget, and
    the networks' training CPU seconds."""
    from stages.ultrasound.head.hc18_training import score_fold
    from stages.ultrasound.head.segmenter_model import save_segmenter
    from stages.ultrasound.head.unet_training import train_models

    jobs, sizes, used = [], {}, {}
    for k in folds_shown:
        train = np.flatnonzero(fold != k)
        idx = nested_subset(d, train, n, 1000 + k)
        sizes[k], used[k] = len(train), len(idx)
        jobs += pair_jobs(str(k), d, idx, s.seed + k).values()
    # the committed step budget (epochs x full / n), times steps_x
    scale = steps_x * np.mean(list(sizes.values())) / np.mean(list(used.values()))
    sk = dataclasses.replace(
        s,
        coarse=dataclasses.replace(s.coarse, epochs=s.coarse.epochs * scale),
        fine=dataclasses.replace(s.fine, epochs=s.fine.epochs * scale),
    )
    fitted = train_models(jobs, sk, dask)
    parts = []
    with tempfile.TemporaryDirectory(prefix="segmenter_lc_") as tmp:
        for k in folds_shown:
            pair = (fitted[f"{k}/coarse"].keras_bytes, fitted[f"{k}/fine"].keras_bytes)
            save_segmenter(Path(tmp) / str(k), {0: pair}, sk, {}, k, n)
            part = score_fold(Path(tmp) / str(k), d, fold == k)
            part.insert(0, "image", [d.names[i] for i in part.index])
            parts.append(part)
    cpu_s = sum(float(np.sum(r.log["epoch_cpu_s"])) for r in fitted.values())
    return pd.concat(parts), cpu_s


def learning_curve(d: HC18Images, s: SegmenterSettings, sizes: list[int], folds_shown: list[int],
                   dask: DaskSettings, steps_x: float) -> None:  # fmt: skip
    fold = segmenter_folds(d.names, d.hc_mm, s.n_folds, s.fold_seed)["fold"].to_numpy()
    full = pd.read_csv(project_root() / SEGMENTER_OOF_CSV, dtype={"image": str})
    full = full[full["fold"].isin(folds_shown)]
    print(header())
    cpu = {}
    for n in sizes:
        part, cpu_s = curve_point(d, fold, s, n, folds_shown, dask, steps_x)
        label = f"n = {n}" + (f", {steps_x:g} x the steps" if steps_x != 1 else "")
        cpu[label] = cpu_s
        print(row(label, str(n), summary(part)), flush=True)
    n_full = int((fold != folds_shown[0]).sum())
    print(row("committed run", f"~{n_full}", summary(full)))
    print(f"\ntraining CPU seconds of folds {folds_shown}' networks:")
    for label, cpu_s in cpu.items():
        print(f"- {label}: {cpu_s:.0f}")
    runs = project_root() / "data/runs/train_segmenter_us.json"  # the stage's last run, untracked
    if runs.is_file():
        stage = json.loads(runs.read_text())["train_cpu_s"]
        mine = sum(v for k, v in stage.items() if any(f"fold_{f}/" in k for f in folds_shown))
        print(
            f"- the stage's last run (data/runs/train_segmenter_us.json): {mine:.0f} of "
            f"{sum(stage.values()):.0f} for all its networks"
        )


def rows_table(out: Path, folds_shown: list[int]) -> None:
    """Where the error sits, per run, from the committed ``oof.csv`` and the ``--out`` rows of
    the seed study: the flagged images' share of the summed |HC error|, the mean |HC error| of
    heads of 100 mm and more, the mean on ``folds_shown`` and the median per-image |change| of
    the HC error from the committed run."""
    base = pd.read_csv(project_root() / SEGMENTER_OOF_CSV, dtype={"image": str})
    runs = {"seed 42 (committed)": base}
    runs |= {f"seed {p.stem.removeprefix('oof_seed')}": pd.read_csv(p, dtype={"image": str})
             for p in sorted(out.glob("oof_seed*.csv"))}  # fmt: skip
    ref = base.set_index("image")["hc_error_mm"]
    print(
        f"| run | flagged share of summed error | heads >= 100 mm | mean mm, heads >= 100 mm "
        f"| mean mm, folds {folds_shown} | median per-image change mm |\n|---|" + "---:|" * 5
    )
    for name, oof in runs.items():
        err, big = oof["hc_error_mm"].abs(), oof["hc_true_mm"] >= 100
        share = err[oof["flagged"].astype(bool)].sum() / err.sum()
        change = (oof.set_index("image")["hc_error_mm"] - ref).abs().median()
        print(
            f"| {name} | {share:.3f} | {int(big.sum())} | {err[big].mean():.3f} | "
            f"{err[oof['fold'].isin(folds_shown)].mean():.3f} | {change:.3f} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.ultrasound.segmenter_study",
                                 description=__doc__.split("\n\n")[0])  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="*", default=[], help="other seeds of the stage")
    ap.add_argument("--n-train", type=int, nargs="*", default=[], help="learning-curve sizes")
    ap.add_argument("--folds", type=int, nargs="*", default=[0, 1], help="learning-curve folds")
    ap.add_argument("--out", type=Path, default=None, help="folder for each seed's oof.csv")
    ap.add_argument("--steps-x", type=float, default=1.0, help="learning curve: x the step budget")
    ap.add_argument("--rows", type=Path, default=None,
                    help="where the error sits, from a seed study's --out folder")  # fmt: skip
    ap.add_argument("--move-folds", action="store_true", help="re-draw the folds with each seed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.rows is not None:  # reads saved rows only: no images, no training
        rows_table(args.rows, args.folds)
    if not (args.seeds or args.n_train):
        return 0
    s = load_settings(SegmenterSettings, "train_segmenter_us")
    dask = load_settings(DaskSettings, "dask")
    d = read_hc18(project_root())
    if args.seeds:
        seed_study(d, s, args.seeds, dask, args.out, args.move_folds)
    if args.n_train:
        learning_curve(d, s, args.n_train, args.folds, dask, args.steps_x)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
