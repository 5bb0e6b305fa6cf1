"""Stage ``train_segmenter_us``: the coarse-to-fine head segmenter, trained on HC18.

Coarse: a small U-Net at 64 x 96 finds the head (the cranium as a soft mask of the target
ellipse). Fine: the same U-Net trunk reads the polar unwrap of the full-resolution enhanced
image around the coarse ellipse and says, per direction, where the skull's outline lies; an
ellipse is fitted to those points (:mod:`stages.ultrasound.head.coarse_to_fine`). Target: the
sonographer's ellipse scaled to the head circumference the sonographer reported.

Examinations (the ``NNN`` of ``NNN_HC`` / ``NNN_2HC``) are split into ``n_folds`` folds,
stratified by head size and seeded (``data/processed/us/segmenter_folds.csv``); each fold's
two networks train on the other folds, every network in its own process with one TensorFlow
thread, two at once on two cores, or on a Dask cluster
(:func:`~stages.ultrasound.head.unet_training.train_models`). Each fold's pair segments its own
held-out images (out-of-fold, OOF: ``oof.csv`` with the quality signals and flag); the
``final`` folder holds all fold pairs, the ensemble that ``segment_us`` uses on images no fold
saw and that ``register_us`` registers as ``us-head-segmenter``, promoted on minus the OOF mean
|HC error| (paired per image). Design, cost and learning curve: ``docs/experiments.md``.

Reference: Ronneberger O et al. U-Net, MICCAI 2015; data: van den Heuvel TLA et al. PLoS ONE
2018;13(8):e0200412 (HC18).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_csv, write_json, write_run_report
from stages.common.ml.splits import stratified_folds
from stages.common.parallel import DaskSettings
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.common.settings import load_settings
from stages.ultrasound.head.coarse_to_fine import score_results
from stages.ultrasound.head.hc18 import flag_summary, hc18_summary, truth_mask
from stages.ultrasound.head.quality import quality_flag
from stages.ultrasound.head.segmenter_model import HeadSegmenter, save_segmenter
from stages.ultrasound.head.settings import SegmenterSettings
from stages.ultrasound.head.training_data import target_ellipse
from stages.ultrasound.head.unet_training import ModelJob, train_models
from stages.ultrasound.imaging import iter_store, read_image
from stages.ultrasound.paths import (
    ENHANCED_HC18,
    HC18_RAW,
    SEGMENTER_FINAL,
    SEGMENTER_FOLDS,
    SEGMENTER_MODELS,
    SEGMENTER_OOF_CSV,
    TRAIN_SEGMENTER_REPORT,
    fold_dir,
)

log = logging.getLogger(__name__)


def exam_id(name: str) -> str:
    """Examination of an HC18 image: ``"012_2HC"`` -> ``"012"`` (shared by one exam's images)."""
    m = re.match(r"^(\d+)_", name)
    return m.group(1) if m else name


def segmenter_folds(
    names: Sequence[str], hc_mm: Sequence[float], n_folds: int, seed: int
) -> pd.DataFrame:
    """Examination-disjoint folds ``image, exam, hc_mm, fold``, stratified by head size.

    Head size is binned into quartiles (fewer bins for fewer than ``4 x n_folds`` images) so
    every fold holds small and big heads alike (HC18 file names are ordered by size); all images
    of one examination land in one fold. Same names, sizes and seed give the same folds.
    """
    hc = np.asarray(hc_mm, dtype=float)
    exams = [exam_id(n) for n in names]
    # quartiles, or fewer size bins when there are too few images for every bin in every fold
    n_bins = max(1, min(4, len(hc) // max(int(n_folds), 1)))
    edges = np.quantile(hc, np.linspace(0, 1, n_bins + 1)[1:-1]) if len(hc) else []
    bins = np.digitize(hc, edges)
    folds = stratified_folds(list(names), bins, int(n_folds), int(seed), groups=exams)
    return pd.DataFrame({"image": list(names), "exam": exams, "hc_mm": hc, "fold": folds})


@dataclass
class HC18Images:
    """The enhanced HC18 images with a usable outline, their truth and target ellipses."""

    names: list[str]
    images: list[np.ndarray]
    truths: list[np.ndarray]  # filled sonographer outline (what Dice is scored against)
    ellipses_px: np.ndarray  # (n, 5) target ellipses (scaled to the reported HC)
    pixel_mm: np.ndarray
    hc_mm: np.ndarray


def read_hc18(root: Path) -> HC18Images:
    """Every enhanced HC18 image listed in the size table whose outline fits an ellipse (an
    outline without one is logged and left out: it has no target)."""
    info = pd.read_csv(root / HC18_RAW / "pixel_size_and_HC.csv")
    info = {str(f)[:-4]: (float(px), float(hc)) for f, px, hc in info.itertuples(index=False)}
    rows: list[tuple] = []
    for name, img in iter_store(root / ENHANCED_HC18):
        if name not in info:
            continue
        outline = read_image(root / HC18_RAW / f"images/{name}_Annotation.png")
        e = target_ellipse(outline, info[name][1], info[name][0])
        if e is None:
            log.warning("%s: no ellipse fits its outline; left out of training", name)
            continue
        rows.append((name, img, truth_mask(outline)[0], e, *info[name]))
    names, images, truths, ells, px, hc = (list(c) for c in zip(*rows, strict=True))
    return HC18Images(names, images, truths, np.array(ells), np.array(px), np.array(hc))


def fold_jobs(d: HC18Images, fold: np.ndarray, s: SegmenterSettings) -> list[ModelJob]:
    """One coarse and one fine network per fold, on the other folds' images; the fine ones
    (the longer fits) first so that the two cores stay busy to the end."""
    jobs = {"fine": [], "coarse": []}
    for k in range(s.n_folds):
        idx = np.flatnonzero(fold != k)
        for kind, offset in (("coarse", 0), ("fine", 1000)):  # the lab's seeds: study = stage
            jobs[kind].append(ModelJob(f"{fold_dir(k)}/{kind}", kind, [d.images[i] for i in idx],
                                       d.ellipses_px[idx], s.seed + k + offset))  # fmt: skip
    return jobs["fine"] + jobs["coarse"]


def score_fold(model_dir: Path, d: HC18Images, held: np.ndarray) -> pd.DataFrame:
    """One fold's held-out images segmented by its pair: Dice, HC (signed error), signals and
    the quality flag with its reason."""
    seg = HeadSegmenter(model_dir)
    idx = np.flatnonzero(held)
    results = seg.segment_many([d.images[i] for i in idx])
    scored = score_results(results, [d.truths[i] for i in idx], d.pixel_mm[idx], d.hc_mm[idx])
    rows = []
    for r, sc in zip(results, scored, strict=True):
        flagged, why = quality_flag(r.ellipse_px is not None, r.signals(), seg.settings.quality)
        rows.append({**sc, **r.signals(), "flagged": flagged, "flag_reason": why})
    return pd.DataFrame(rows, index=idx)


def summary(oof: pd.DataFrame) -> dict[str, float]:
    """OOF :func:`~stages.ultrasound.head.hc18.hc18_summary` and
    :func:`~stages.ultrasound.head.hc18.flag_summary`, ``oof_``-prefixed, with the promotion
    metric ``oof_hc_error_mm_mean_neg``."""
    args = (oof["dice"], oof["hc_error_mm"], oof["hc_true_mm"])
    out = {f"oof_{k}": v for k, v in hc18_summary(*args).items()}
    out |= {f"oof_{k}": v for k, v in flag_summary(oof["flagged"].astype(bool), *args).items()}
    return out | {"oof_hc_error_mm_mean_neg": -out["oof_hc_error_mm_mean"]}


def train_all(
    root: Path, d: HC18Images, fold: np.ndarray, s: SegmenterSettings, dask: DaskSettings,
    enhance_us: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any]]:  # fmt: skip
    """Train every fold's pair, write the fold folders and the ``final`` ensemble atomically,
    and score each fold out-of-fold. Returns the OOF rows and the training logs by network."""
    fitted = train_models(fold_jobs(d, fold, s), s, dask)
    pairs = {k: (fitted[f"{fold_dir(k)}/coarse"].keras_bytes,
                 fitted[f"{fold_dir(k)}/fine"].keras_bytes) for k in range(s.n_folds)}  # fmt: skip
    parts = []
    with atomic_dir(root / SEGMENTER_MODELS) as tmp:
        for k in range(s.n_folds):
            n_train = int((fold != k).sum())
            save_segmenter(tmp / fold_dir(k), {0: pairs[k]}, s, enhance_us, k, n_train)
            parts.append(score_fold(tmp / fold_dir(k), d, fold == k))
        save_segmenter(tmp / SEGMENTER_FINAL, pairs, s, enhance_us, None, len(d.names))
    oof = pd.concat(parts).sort_index()
    oof.insert(0, "image", d.names)
    oof.insert(1, "fold", fold)
    return oof, {name: r.log for name, r in fitted.items()}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    s = load_settings(SegmenterSettings, "train_segmenter_us")
    dask = load_settings(DaskSettings, "dask")
    enhance_us, root = load_params("enhance_us"), project_root()
    d = read_hc18(root)
    folds = segmenter_folds(d.names, d.hc_mm, s.n_folds, s.seed)
    write_csv(root / SEGMENTER_FOLDS, folds)
    with tracking.run("us-head-segmenter", "train_segmenter_us", load_params("train_segmenter_us"),
                      stage="train_segmenter_us"):  # fmt: skip
        oof, logs = train_all(root, d, folds["fold"].to_numpy(), s, dask, enhance_us)
        report: dict[str, Any] = {**summary(oof), "n_images": len(d.names), "n_folds": s.n_folds}
        # CPU seconds are run facts (untracked data/runs/ and MLflow), not model facts
        cpu = {f"train_cpu_s/{k}": float(np.sum(v["epoch_cpu_s"])) for k, v in logs.items()}
        tracking.log_metrics({**report, **cpu})
    write_csv(root / SEGMENTER_OOF_CSV, oof)
    write_json(root / TRAIN_SEGMENTER_REPORT, report)
    write_run_report(root, "train_segmenter_us", {"train_cpu_s": cpu})
    log.info("OOF |HC error| %.2f mm (median %.2f), Dice %.3f; flagged %.1f %%, accepted %.2f mm",
             report["oof_hc_error_mm_mean"], report["oof_hc_error_mm_median"],
             report["oof_dice_mean"], 100 * report["oof_flag_rate"],
             report["oof_accepted_hc_error_mm_mean"])  # fmt: skip


if __name__ == "__main__":
    main()
