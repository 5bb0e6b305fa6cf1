"""Stage ``train_segmenter_us``: a small U-Net for the fetal cranium, trained on HC18.

Input: the enhanced HC18 images (``data/interim/us/enhanced/hc18``, what ``segment_us`` sees),
resized to ``input_height`` x ``input_width``; target: the sonographer's ellipse with the head
circumference the sonographer reported (:func:`target_mask`), resized the same way as a soft
(area-fraction) mask, so the network's 0.5 contour can sit between low-resolution pixels. The
filled outline itself (what Dice is scored against) includes the drawn line's width: its
circumference is ~1 % above the reported one, which is 2-3 mm on the big heads (fold 0 of a
first model trained on it: median +1.2 % on the last hundred).

Examinations (the ``NNN`` of ``NNN_HC`` / ``NNN_2HC``) are split into ``n_folds`` folds,
stratified by head-circumference quantile and seeded (``data/processed/us/segmenter_folds.csv``);
one model per fold is trained on the other folds and scores its own fold (out-of-fold, OOF),
and one final model is trained on every image. The models train at once, one per core, each
in its own process with one TensorFlow thread (:func:`~stages.ultrasound.head.unet_training.
train_models`: twice the models per hour of one process on both cores; the count never changes
a model). ``segment_us`` segments each HC18 image with the fold model that never saw it and
every other image (FETAL_PLANES_DB, ``fetal score-us``) with the final model; this stage's
report holds the OOF Dice and head-circumference error of the U-Net ellipse alone (the 0.5
contour, no classical refinement), ``segment_us``'s report those of the whole method (its
``unet_level`` and refinement settings).

``register_us`` registers the final model as ``us-head-segmenter`` from this stage's ``oof.csv``,
promoted on ``oof_hc_error_mm_mean_neg`` (minus the OOF mean absolute HC error, paired per image
with the champion's stored OOF errors): head circumference is what the segmentation is for and
what the 3 mm target is about; Dice is near 0.97 for nearly any right ellipse and barely moves.

Reference: Ronneberger O et al. U-Net, MICCAI 2015; data: van den Heuvel TLA et al. PLoS ONE
2018;13(8):e0200412 (HC18).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_csv, write_json, write_run_report
from stages.common.ml.splits import stratified_folds
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.ultrasound.head.geometry import ellipse_from_outline
from stages.ultrasound.head.hc18 import hc18_summary, truth_mask
from stages.ultrasound.head.unet import ellipse_from_probability, to_input
from stages.ultrasound.head.unet_training import ModelJob, train_models
from stages.ultrasound.imaging import (
    Ellipse,
    dice,
    ellipse_mask,
    iter_store,
    ramanujan_perimeter,
    read_image,
)
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

FINAL = SEGMENTER_FINAL


def exam_id(name: str) -> str:
    """Examination of an HC18 image: ``"012_2HC"`` -> ``"012"`` (shared by one exam's images)."""
    m = re.match(r"^(\d+)_", name)
    return m.group(1) if m else name


def segmenter_folds(
    names: Sequence[str], hc_mm: Sequence[float], n_folds: int, seed: int
) -> pd.DataFrame:
    """Examination-disjoint folds ``image, exam, hc_mm, fold``, stratified by head size.

    Head size is binned into quartiles (fewer bins for fewer than ``4 x n_folds`` images) so
    every fold holds small and big heads alike (HC18 file names are ordered by size: the last
    hundred are the big heads); all images of one examination land in one fold. Same names,
    sizes and seed give the same folds.
    """
    hc = np.asarray(hc_mm, dtype=float)
    exams = [exam_id(n) for n in names]
    # quartiles, or fewer size bins when there are too few images for every bin in every fold
    n_bins = max(1, min(4, len(hc) // max(int(n_folds), 1)))
    edges = np.quantile(hc, np.linspace(0, 1, n_bins + 1)[1:-1]) if len(hc) else []
    bins = np.digitize(hc, edges)
    folds = stratified_folds(list(names), bins, int(n_folds), int(seed), groups=exams)
    return pd.DataFrame({"image": list(names), "exam": exams, "hc_mm": hc, "fold": folds})


def target_mask(outline: np.ndarray, hc_mm: float, pixel_mm: float) -> np.ndarray:
    """The training target of one HC18 image: the ellipse fitted to the sonographer's outline,
    scaled about its centre to the circumference the sonographer reported (``hc_mm``).

    The ellipse fitted to the drawn line runs along its middle and is still ~0.6 % longer
    than the reported circumference (HC18 README); the scale makes the network learn the
    reported measurement. An outline no ellipse fits falls back to the filled outline.
    """
    e = ellipse_from_outline(outline)
    if e is None or not (hc_mm > 0 and pixel_mm > 0):
        return truth_mask(outline)[0]
    k = hc_mm / (float(ramanujan_perimeter(e.a, e.b)) * pixel_mm)
    return ellipse_mask(outline.shape, Ellipse(e.cx, e.cy, e.a * k, e.b * k, e.angle_rad))


def mask_to_input(mask: np.ndarray, input_hw: Sequence[int]) -> np.ndarray:
    """Boolean mask -> float32 (H, W): the share of each low-resolution pixel inside it."""
    return to_input(np.where(mask, 255, 0).astype(np.uint8), input_hw)


def score_ellipses(
    prob: np.ndarray,
    shapes: Sequence[tuple[int, int]],
    truths: Sequence[np.ndarray],
    pixel_mm: Sequence[float],
    hc_true_mm: Sequence[float],
    level: float = 0.5,
    limits: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Dice and HC error of the ellipses fitted to probability maps (N, h, w) (U-Net alone).

    Returns ``dice, hc_mm, hc_error_mm`` (signed: measured - sonographer), ``hc_true_mm`` per
    image; an image without an ellipse gets Dice 0 and NaN errors.
    """
    rows = []
    for p, shape, truth, px, hc in zip(prob, shapes, truths, pixel_mm, hc_true_mm, strict=True):
        e, _ = ellipse_from_probability(p, shape, level, limits=limits)
        if e is None:
            rows.append({"dice": 0.0, "hc_mm": np.nan, "hc_error_mm": np.nan, "hc_true_mm": hc})
            continue
        hc_mm = float(ramanujan_perimeter(e.a, e.b)) * px
        rows.append(
            {
                "dice": dice(ellipse_mask(shape, e), truth),
                "hc_mm": hc_mm,
                "hc_error_mm": hc_mm - hc,
                "hc_true_mm": hc,
            }
        )
    return pd.DataFrame(rows)


def summary(oof: pd.DataFrame) -> dict[str, float]:
    """OOF :func:`~stages.ultrasound.head.hc18.hc18_summary` of ``dice, hc_error_mm (signed),
    hc_true_mm`` rows, ``oof_``-prefixed, with the promotion metric ``oof_hc_error_mm_mean_neg``."""
    out = {
        f"oof_{k}": v
        for k, v in hc18_summary(oof["dice"], oof["hc_error_mm"], oof["hc_true_mm"]).items()
    }
    return out | {"oof_hc_error_mm_mean_neg": -out["oof_hc_error_mm_mean"]}


def model_config(
    params: dict[str, Any], enhance_params: dict[str, Any], fold: int | None, n_train: int
) -> dict:
    """What ``config.json`` of one model folder holds (read back by the segmenter loader).

    ``enhance_us`` is how the training images were enhanced: the registered model enhances
    raw images the same way.
    """
    return {
        "kind": "head_segmenter",
        "enhance_us": enhance_params,
        "input_height": int(params["input_height"]),
        "input_width": int(params["input_width"]),
        "fold": fold,
        "n_train": int(n_train),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params, enhance_params = load_params("train_segmenter_us"), load_params("enhance_us")
    root = project_root()
    info = pd.read_csv(root / HC18_RAW / "pixel_size_and_HC.csv")
    info = {str(f)[:-4]: (float(px), float(hc)) for f, px, hc in info.itertuples(index=False)}
    names, images, truths, targets = [], [], [], []
    for name, img in iter_store(root / ENHANCED_HC18):
        if name in info:
            outline = read_image(root / HC18_RAW / f"images/{name}_Annotation.png")
            names.append(name)
            images.append(img)
            truths.append(truth_mask(outline)[0])  # what Dice is scored against
            targets.append(target_mask(outline, info[name][1], info[name][0]))
    hw = (int(params["input_height"]), int(params["input_width"]))
    x = np.stack([to_input(im, hw) for im in images])
    y = np.stack([mask_to_input(t, hw) for t in targets])
    px_mm, hc_mm = (np.array([info[n][k] for n in names]) for k in (0, 1))
    folds = segmenter_folds(names, hc_mm, int(params["n_folds"]), int(params["seed"]))
    write_csv(root / SEGMENTER_FOLDS, folds)
    oof = pd.DataFrame(
        index=range(len(names)), columns=["dice", "hc_mm", "hc_error_mm", "hc_true_mm"]
    )
    with tracking.run(
        "us-head-segmenter", "train_segmenter_us", params, stage="train_segmenter_us"
    ):
        with atomic_dir(root / SEGMENTER_MODELS) as tmp:
            jobs = [
                ModelJob(
                    fold_dir(k),
                    x[folds["fold"] != k],
                    y[folds["fold"] != k],
                    int(params["seed"]) + k,
                    tmp / fold_dir(k),
                    model_config(params, enhance_params, k, int((folds["fold"] != k).sum())),
                    x_score=x[folds["fold"] == k],
                )
                for k in range(int(params["n_folds"]))
            ]
            final = model_config(params, enhance_params, None, len(names))
            jobs.append(ModelJob(FINAL, x, y, int(params["seed"]), tmp / FINAL, final))
            fitted = train_models(jobs, params)
        for k in range(int(params["n_folds"])):
            held = (folds["fold"] == k).to_numpy()
            scored = score_ellipses(
                fitted[fold_dir(k)].prob,
                [im.shape for im, h in zip(images, held, strict=True) if h],
                [t for t, h in zip(truths, held, strict=True) if h],
                px_mm[held],
                hc_mm[held],
            )
            oof.loc[np.flatnonzero(held), scored.columns] = scored.to_numpy()
            log.info("fold %d: %s", k, summary(scored))
        times = {job.name: fitted[job.name].result["epoch_times_s"] for job in jobs}
        oof = oof.astype(float)
        oof.insert(0, "image", names)
        oof.insert(1, "fold", folds["fold"].to_numpy())
        report: dict[str, Any] = {
            **summary(oof),
            "n_images": len(names),
            "n_folds": int(params["n_folds"]),
        }
        # times are run facts (untracked data/runs/ and MLflow), not model facts
        timings = {
            "epoch_time_s_mean": float(np.mean([t for v in times.values() for t in v])),
            "train_time_s_per_model": {k: float(np.sum(v)) for k, v in times.items()},
        }
        tracking.log_metrics(
            {k: v for k, v in {**report, **timings}.items() if not isinstance(v, dict)}
        )
    write_csv(root / SEGMENTER_OOF_CSV, oof)
    write_json(root / TRAIN_SEGMENTER_REPORT, report)
    write_run_report(root, "train_segmenter_us", timings)
    log.info(
        "OOF Dice %.3f (median %.3f), |HC error| %.2f mm (median %.2f)",
        report["oof_dice_mean"],
        report["oof_dice_median"],
        report["oof_hc_error_mm_mean"],
        report["oof_hc_error_mm_median"],
    )


if __name__ == "__main__":
    main()
