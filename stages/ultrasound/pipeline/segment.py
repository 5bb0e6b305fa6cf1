"""Stage ``segment_us``: skull ellipse, cranium and brain masks, brain crops, head circumference.

The methods (``segment_us.method``) live in :mod:`stages.ultrasound.head`: ``classical``
(ray-cast skull edges + RANSAC ellipse) and ``unet`` (the coarse-to-fine segmenter of
``train_segmenter_us``, with its quality flag and the flag's reason per image). The crops are
``us_crops.crop_px`` square, the input side of both crop models. With method ``unet`` an HC18
image is segmented by the fold pair that never saw it (the fold manifest
``data/processed/us/segmenter_folds.csv``) and every other image by the ``final`` ensemble of
the fold pairs, so the HC18 figures of this stage's report are out-of-fold.

Head circumference: Ramanujan perimeter of the fitted ellipse times the pixel size (mm/px).
Evaluation data: van den Heuvel TLA et al. PLoS ONE 2018;13(8):e0200412 (HC18).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_csv, write_json, write_npz
from stages.common.parallel import map_images
from stages.common.params import load_params, project_root
from stages.common.settings import load_settings
from stages.ultrasound.crops import CropSettings
from stages.ultrasound.enhance.methods import EnhanceStageSettings
from stages.ultrasound.figures import overlays_figure
from stages.ultrasound.head.geometry import brain_crop
from stages.ultrasound.head.hc18 import flag_summary, half_summaries, hc18_summary, truth_mask
from stages.ultrasound.head.segmenter_model import load_segmenter
from stages.ultrasound.head.segmenters import segment_image
from stages.ultrasound.head.settings import SegmentSettings
from stages.ultrasound.imaging import dice, load_item, read_image, store_items, write_store_chunk
from stages.ultrasound.paths import (
    CROPS_NPZ,
    ENHANCED_DIR,
    HC18_CSV,
    HC18_RAW,
    SEGMENT_US_FIGURE,
    SEGMENT_US_REPORT,
    SEGMENTATION_CSV,
    SEGMENTED_DIR,
    SEGMENTER_FOLDS,
    SEGMENTER_MODELS,
    read_segmenter_folds,
    segmenter_folder,
)

log = logging.getLogger(__name__)

DATASETS = ("fetal_planes", "hc18")
# (dataset, name, store locator, HC18 outline path, pixel mm, true HC mm, U-Net folder)
Item = tuple[str, str, str, str, float, float, str]


def _segment_item(item: Item, settings: SegmentSettings, crop_px: int) -> dict:
    """Segment one enhanced image; for HC18 also score it against the sonographer outline.

    The last field of ``item`` is the U-Net folder for method ``unet`` ("" for the others).
    """
    dataset, name, locator, ann_path, pixel_mm, hc_true_mm, unet_dir = item
    img = load_item(locator)
    seg = segment_image(img, settings, load_segmenter(unet_dir))
    crop = brain_crop(img, seg, crop_px)
    row: dict[str, Any] = {
        "dataset": dataset,
        "image": name,
        "ok": seg.ok,
        "reason": seg.reason,
        **seg.ellipse_fields(),
        "skull_px": seg.skull_px,
        "score": seg.score,
        "hc_px": seg.hc_px(),
        "pixel_mm": pixel_mm,
        "hc_mm": seg.hc_px() * pixel_mm,
        "flagged": seg.flagged,
        "flag_reason": seg.flag_reason,
        **seg.signals,
    }
    if ann_path:
        truth, te, degenerate = truth_mask(read_image(ann_path))
        row["dice"] = dice(seg.cranium, truth)
        row["truth_degenerate"] = degenerate
        row["hc_true_mm"] = hc_true_mm
        # signed (measured - sonographer) shows a bias; absolute is the headline error
        row["hc_signed_error_mm"] = row["hc_mm"] - hc_true_mm if seg.ok else np.nan
        row["hc_error_mm"] = abs(row["hc_signed_error_mm"]) if seg.ok else np.nan
    return {"row": row, "crop": crop, "labels": seg.label_image()}


def segment_items(root: Path, uses_unet: bool) -> list[Item]:
    """One item per enhanced image; HC18 ones with their outline, pixel size and true HC, and
    with method ``unet`` the U-Net folder that never saw the image
    (:func:`~stages.ultrasound.paths.segmenter_folder`)."""
    hc_csv = pd.read_csv(root / HC18_RAW / HC18_CSV)
    hc_info = {str(f)[:-4]: (float(px), float(hc)) for f, px, hc in hc_csv.itertuples(index=False)}
    folds = read_segmenter_folds(root / SEGMENTER_FOLDS) if uses_unet else {}
    items = []
    for dataset in DATASETS:
        for name, loc in store_items(root / ENHANCED_DIR / dataset):
            hc18 = dataset == "hc18"
            px, hc = hc_info.get(name, (np.nan, np.nan)) if hc18 else (np.nan, np.nan)
            ann = str(root / HC18_RAW / "images" / f"{name}_Annotation.png") if hc18 else ""
            unet = (
                segmenter_folder(dataset, name, folds, root / SEGMENTER_MODELS) if uses_unet else ""
            )
            items.append((dataset, name, loc, ann, px, hc, str(unet)))
    return items


def write_segmented(root: Path, done: list[tuple[Item, dict]], layout: str) -> pd.DataFrame:
    """The label images (``layout`` store per data set), the crops and the segmentation table."""
    with atomic_dir(root / SEGMENTED_DIR) as out:
        for dataset in DATASETS:
            labels = [(it[1], v["labels"]) for it, v in done if it[0] == dataset]
            write_store_chunk(out / dataset, labels, layout, 0)
    write_npz(
        root / CROPS_NPZ,
        images=np.stack([v["crop"] for _, v in done]).astype(np.uint8),
        names=np.array([it[1] for it, _ in done]),
        datasets=np.array([it[0] for it, _ in done]),
    )
    df = pd.DataFrame([v["row"] for _, v in done])
    write_csv(root / SEGMENTATION_CSV, df)
    return df


def segment_report(df: pd.DataFrame, failures: list[str], method: str) -> dict[str, Any]:
    """Counts, and on HC18 the Dice and HC error (both halves); method ``unet`` segments each
    HC18 image with the fold model that never saw it (out-of-fold)."""
    report = {"method": method, "n": len(df), "n_failed": len(failures), "failures": failures}
    hc = df[df["dataset"] == "hc18"]
    if not len(hc):
        return report
    summary = hc18_summary(hc["dice"], hc["hc_signed_error_mm"], hc["hc_true_mm"])
    return {
        "method": method,
        "n": len(df),
        "n_hc18": len(hc),
        "n_failed": len(failures),
        "failures": failures,
        "n_no_ellipse": int((~df["ok"]).sum()),  # both data sets: hc18_summary's is HC18's
        **{k: v for k, v in summary.items() if k != "n_no_ellipse"},
        **half_summaries(hc),
        **flag_summary(
            hc["flagged"].astype(bool), hc["dice"], hc["hc_signed_error_mm"], hc["hc_true_mm"]
        ),  # fmt: skip
        "hc18_out_of_fold": method == "unet",
        "degenerate_truth": list(hc.loc[hc["truth_degenerate"].astype(bool), "image"]),
    }


def overlay_tiles(df: pd.DataFrame, done: list[tuple[Item, dict]]) -> list:
    """Eight HC18 images spread over the Dice range and four FETAL_PLANES_DB images."""
    hc = df[df["dataset"] == "hc18"]
    show = hc.sort_values("dice").iloc[np.linspace(0, len(hc) - 1, min(8, len(hc))).astype(int)]
    by_key = {(it[0], it[1]): (it, v) for it, v in done}
    tiles = []
    for rr in [*show.itertuples(), *df[df["dataset"] == "fetal_planes"].head(4).itertuples()]:
        it, v = by_key[(rr.dataset, rr.image)]
        note = f"Dice {rr.dice:.3f}" if rr.dataset == "hc18" else ""
        tiles.append((rr.image, load_item(it[2]), v["labels"], note))
    return tiles


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    s = load_settings(SegmentSettings, "segment_us")
    crops = load_settings(CropSettings, "us_crops")
    layout = load_settings(EnhanceStageSettings, "enhance_us").layout
    root = project_root()
    items = segment_items(root, s.method == "unet")
    segment = functools.partial(_segment_item, settings=s, crop_px=crops.crop_px)
    res = map_images(segment, items, load_params("dask"), desc="segment")
    done = [(it, r.value) for it, r in zip(items, res, strict=True) if r.ok]
    failures = [f"{it[0]}/{it[1]}: {r.error}" for it, r in zip(items, res, strict=True) if not r.ok]
    df = write_segmented(root, done, layout)
    report = segment_report(df, failures, s.method)
    write_json(root / SEGMENT_US_REPORT, report)
    (root / SEGMENT_US_FIGURE).parent.mkdir(parents=True, exist_ok=True)
    overlays_figure(overlay_tiles(df, done), root / SEGMENT_US_FIGURE)
    log.info("segment_us: %s", {k: v for k, v in report.items() if k != "failures"})


if __name__ == "__main__":
    main()
