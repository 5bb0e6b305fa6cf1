"""Training and out-of-fold scoring of the coarse-to-fine head segmenter on HC18 (the library
behind stage ``train_segmenter_us``; the seed and learning-curve study reuses it).

The HC18 images with their truth (:func:`read_hc18`), examination-disjoint folds
(:func:`segmenter_folds`), one coarse and one fine network per fold (:func:`fold_jobs`) trained
by :func:`~stages.ultrasound.head.unet_training.train_models`, each fold's pair scored on its
held-out images (:func:`score_fold`), the fold folders and the ``final`` ensemble written
atomically (:func:`train_all`), and the out-of-fold summary (:func:`summary`).
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

from stages.common.io import atomic_dir
from stages.common.ml.splits import stratified_folds
from stages.common.parallel import DaskSettings
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
    SEGMENTER_MODELS,
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


def pair_jobs(prefix: str, d: HC18Images, idx: np.ndarray, seed: int) -> dict[str, ModelJob]:
    """The fine and the coarse network of one fold on images ``idx``, named ``prefix/kind`` and
    seeded ``seed`` (coarse) and ``seed + 1000`` (fine); the stage and the study both build
    their fits here, so the study trains what the stage would."""
    images = [d.images[i] for i in idx]
    return {kind: ModelJob(f"{prefix}/{kind}", kind, images, d.ellipses_px[idx], seed + offset)
            for kind, offset in (("fine", 1000), ("coarse", 0))}  # fmt: skip


def fold_jobs(d: HC18Images, fold: np.ndarray, s: SegmenterSettings) -> list[ModelJob]:
    """One coarse and one fine network per fold, on the other folds' images; the fine ones
    (the longer fits) first so that the two cores stay busy to the end."""
    pairs = [pair_jobs(fold_dir(k), d, np.flatnonzero(fold != k), s.seed + k)
             for k in range(s.n_folds)]  # fmt: skip
    return [p["fine"] for p in pairs] + [p["coarse"] for p in pairs]


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
